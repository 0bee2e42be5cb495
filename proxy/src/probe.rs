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
