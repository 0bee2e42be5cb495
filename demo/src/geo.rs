//! Simulated geo DNS, the way Route 53 geo-proximity routing with health
//! checks behaves: every client has a location; "the global URL" resolves
//! to the nearest region (a fixed nearness order per location) whose
//! endpoint passes a health check. A background checker polls each
//! region's `/healthz` (proxies) or `/health` (apps) every
//! [`CHECK_EVERY`]; one failed check takes a region out of answers, one
//! success puts it back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Nearness order of the regions (indices into the region list) for a
/// client located in each region: eu → eu, us, ap; us → us, eu, ap;
/// ap → ap, us, eu.
const NEARNESS: [[usize; 3]; 3] = [[0, 1, 2], [1, 0, 2], [2, 1, 0]];

pub struct GeoDns {
    /// Base URLs of the endpoints, by region index.
    urls: Vec<String>,
    health_path: &'static str,
    healthy: Vec<AtomicBool>,
}

impl GeoDns {
    pub fn new(urls: Vec<String>, health_path: &'static str) -> Arc<GeoDns> {
        let healthy = urls.iter().map(|_| AtomicBool::new(true)).collect();
        Arc::new(GeoDns {
            urls,
            health_path,
            healthy,
        })
    }

    /// Runs the health checker until the returned handle is aborted.
    pub fn start_checks(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let geo = self.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap_or_default();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                for (i, url) in geo.urls.iter().enumerate() {
                    let ok = matches!(
                        http.get(format!("{url}{}", geo.health_path)).send().await,
                        Ok(r) if r.status().is_success()
                    );
                    geo.healthy[i].store(ok, Ordering::Relaxed);
                }
            }
        })
    }

    /// The nearest healthy endpoint for a client at `location`; if none is
    /// healthy, the nearest one anyway (DNS keeps answering).
    pub fn resolve(&self, location: usize) -> &str {
        let order = NEARNESS[location % NEARNESS.len()];
        let pick = order
            .iter()
            .copied()
            .find(|&i| {
                self.healthy
                    .get(i)
                    .is_some_and(|h| h.load(Ordering::Relaxed))
            })
            .unwrap_or(order[0]);
        &self.urls[pick]
    }

    pub fn regions(&self) -> usize {
        self.urls.len()
    }
}

/// A client's current location; changing it is a "jump".
#[derive(Clone)]
pub struct Location(Arc<AtomicUsize>);

impl Location {
    pub fn new(at: usize) -> Location {
        Location(Arc::new(AtomicUsize::new(at)))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Moves to a different location of `n`.
    pub fn jump(&self, n: usize, rng: &mut impl rand::Rng) {
        if n > 1 {
            let now = self.get();
            let next = (now + rng.random_range(1..n)) % n;
            self.0.store(next, Ordering::Relaxed);
        }
    }
}

/// The SDK's view of the global URL for one client: geo DNS at the
/// client's current location.
pub fn resolver(geo: Arc<GeoDns>, at: Location) -> Arc<dyn tether_client::GlobalUrl> {
    Arc::new(move || geo.resolve(at.get()).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_healthy_region_answers() {
        let geo = GeoDns::new(vec!["eu".into(), "us".into(), "ap".into()], "/h");
        assert_eq!(geo.resolve(0), "eu");
        assert_eq!(geo.resolve(2), "ap");
        geo.healthy[1].store(false, Ordering::Relaxed);
        assert_eq!(geo.resolve(1), "eu");
        assert_eq!(geo.resolve(2), "ap");
        for h in &geo.healthy {
            h.store(false, Ordering::Relaxed);
        }
        assert_eq!(
            geo.resolve(1),
            "us",
            "DNS still answers when nothing is healthy"
        );
    }

    #[test]
    fn jumps_always_change_location() {
        let mut rng = rand::rng();
        let l = Location::new(0);
        for _ in 0..100 {
            let before = l.get();
            l.jump(3, &mut rng);
            assert_ne!(before, l.get());
            assert!(l.get() < 3);
        }
    }
}
