//! Fast-failover probe (docs/design.md §5): when a client reports its server
//! unreachable, ask that server's `/healthz` at its registry URL ourselves.
//!
//! One probe in flight per server: concurrent refreshes naming the same
//! server wait on the same `OnceCell`. A result is reused for
//! [`PROBE_CACHE`], so a stampede of clients costs one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// How long a probe result is reused.
pub const PROBE_CACHE: Duration = Duration::from_secs(1);

/// How long a server a probe found dead stays dead for this proxy's
/// placements and lock decisions, while discovery has not evicted it yet
/// (it is forgotten sooner if a later probe finds it alive).
pub const DEAD_MEMORY: Duration = Duration::from_secs(10);

struct Slot {
    started: Instant,
    alive: OnceCell<bool>,
}

pub struct Prober {
    http: reqwest::Client,
    /// For `https://` peers (reqwest is built without TLS here; the probe
    /// speaks HTTPS itself through Pingora's rustls).
    tls: Arc<pingora_core::tls::ClientConfig>,
    timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Servers found dead, with when.
    dead: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        // The maps hold plain data; a panic elsewhere cannot leave them
        // inconsistent.
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Prober {
    pub fn new(timeout: Duration, tls: Arc<pingora_core::tls::ClientConfig>) -> Prober {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Prober {
            http,
            tls,
            timeout,
            slots: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the server answers `GET {url}/healthz` with a 2xx. `url`
    /// must come from the registry, never from the client.
    pub async fn is_alive(&self, id: &str, url: &str) -> bool {
        let slot = {
            let mut slots = lock(&self.slots);
            // Forget old results; keeps the map as small as the set of
            // servers probed in the last second.
            slots.retain(|_, s| s.started.elapsed() < PROBE_CACHE);
            slots
                .entry(id.to_owned())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        started: Instant::now(),
                        alive: OnceCell::new(),
                    })
                })
                .clone()
        };
        let alive = *slot
            .alive
            .get_or_init(|| async {
                let target = format!("{}/healthz", url.trim_end_matches('/'));
                if target.starts_with("https://") {
                    return https_healthz(&target, self.timeout, &self.tls).await;
                }
                match self.http.get(&target).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                }
            })
            .await;
        let mut dead = lock(&self.dead);
        if alive {
            dead.remove(id);
        } else {
            dead.entry(id.to_owned()).or_insert_with(Instant::now);
        }
        alive
    }

    /// Whether a recent probe found `id` dead. Called on the foreign-lock
    /// path only (never for this server's own clients).
    pub fn is_known_dead(&self, id: &str) -> bool {
        let dead = lock(&self.dead);
        !dead.is_empty() && dead.get(id).is_some_and(|t| t.elapsed() < DEAD_MEMORY)
    }

    /// Every server a recent probe found dead.
    pub fn known_dead(&self) -> Vec<String> {
        let mut dead = lock(&self.dead);
        dead.retain(|_, t| t.elapsed() < DEAD_MEMORY);
        dead.keys().cloned().collect()
    }
}

/// `GET target` over HTTPS within `timeout`; true on a 2xx status. Only
/// the status line is read.
async fn https_healthz(
    target: &str,
    timeout: Duration,
    tls: &Arc<pingora_core::tls::ClientConfig>,
) -> bool {
    use pingora_core::tls::{ServerName, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(u) = url::Url::parse(target) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = u.port_or_known_default().unwrap_or(443);
    let Ok(name) = ServerName::try_from(bare.clone()) else {
        return false;
    };
    let authority = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tether-probe\r\nConnection: close\r\n\r\n",
        u.path()
    );
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut s = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        // "HTTP/1.1 200"
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(head.starts_with(b"HTTP/1.") && head[8] == b' ' && head[9] == b'2')
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            tracing::info!("probe {target}: {e}");
            false
        }
        Err(_) => {
            tracing::info!("probe {target}: no answer within {timeout:?}");
            false
        }
    }
}
