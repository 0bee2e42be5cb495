//! Fast-failover probe (DESIGN.md §5): when a client reports its server
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

struct Slot {
    started: Instant,
    alive: OnceCell<bool>,
}

pub struct Prober {
    http: reqwest::Client,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Prober {
    pub fn new(timeout: Duration) -> Prober {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Prober {
            http,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the server answers `GET {url}/healthz` with a 2xx. `url`
    /// must come from the registry, never from the client.
    pub async fn is_alive(&self, id: &str, url: &str) -> bool {
        let slot = {
            let mut slots = match self.slots.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
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
        *slot
            .alive
            .get_or_init(|| async {
                let target = format!("{}/healthz", url.trim_end_matches('/'));
                match self.http.get(&target).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                }
            })
            .await
    }
}
