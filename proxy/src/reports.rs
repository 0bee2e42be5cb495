//! "I cannot reach my server" reports at refresh, remembered per refresh
//! family (one client session), for the asymmetric partition rule
//! (docs/design.md §5, rule 0 of `tether_protocol::placement`).
//!
//! A report counts when this proxy's probe finds the reported server
//! alive: the client is cut off from a server the proxies still reach.
//! [`THRESHOLD`] such reports from one family about one server within
//! [`WINDOW`] move that client, and only that client, off the server.
//! Bounded: at most [`CAPACITY`] (family, server) pairs are kept; expired
//! ones are dropped first, and when every slot is fresh a new pair is not
//! recorded (the client then waits for the server or discovery, as before).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reports from one family about one server that move the client.
pub const THRESHOLD: usize = 2;
/// How long a report counts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most (family, server) pairs remembered.
pub const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct UnreachableReports {
    /// (family, server) → times of the reports within the window.
    seen: Mutex<HashMap<(String, String), Vec<Instant>>>,
}

impl UnreachableReports {
    /// Records that `family` reported `server` unreachable (and a probe
    /// found it alive) at `now`.
    pub fn record(&self, family: &str, server: &str, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (family.to_owned(), server.to_owned());
        if !seen.contains_key(&key) && seen.len() >= CAPACITY {
            seen.retain(|_, times| {
                times.retain(|t| now.saturating_duration_since(*t) < WINDOW);
                !times.is_empty()
            });
            if seen.len() >= CAPACITY {
                return;
            }
        }
        let times = seen.entry(key).or_default();
        times.retain(|t| now.saturating_duration_since(*t) < WINDOW);
        times.push(now);
        // Only the last THRESHOLD matter.
        if times.len() > THRESHOLD {
            let extra = times.len() - THRESHOLD;
            times.drain(..extra);
        }
    }

    /// The servers `family` is cut off from: reported at least
    /// [`THRESHOLD`] times within [`WINDOW`] of `now`.
    pub fn cut_off(&self, family: &str, now: Instant) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|((fam, _), times)| {
                fam == family
                    && times
                        .iter()
                        .filter(|t| now.saturating_duration_since(**t) < WINDOW)
                        .count()
                        >= THRESHOLD
            })
            .map(|((_, server), _)| server.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_reports_within_the_window_cut_one_family_off() {
        let r = UnreachableReports::default();
        let t0 = Instant::now();
        r.record("fam-a", "eu-1", t0);
        assert!(r.cut_off("fam-a", t0).is_empty(), "one report is a blip");
        r.record("fam-a", "eu-1", t0 + Duration::from_secs(2));
        assert_eq!(r.cut_off("fam-a", t0 + Duration::from_secs(2)), ["eu-1"]);
        // Nobody else.
        assert!(r.cut_off("fam-b", t0).is_empty());
        // It expires.
        assert!(r
            .cut_off("fam-a", t0 + WINDOW + Duration::from_secs(3))
            .is_empty());
        // Reports further apart than the window never add up.
        let r = UnreachableReports::default();
        r.record("fam-a", "eu-1", t0);
        r.record("fam-a", "eu-1", t0 + WINDOW + Duration::from_secs(1));
        assert!(r
            .cut_off("fam-a", t0 + WINDOW + Duration::from_secs(1))
            .is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let r = UnreachableReports::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 50 {
            r.record(&format!("fam-{i}"), "eu-1", t0);
        }
        assert_eq!(r.seen.lock().unwrap().len(), CAPACITY);
        // Once the old ones expire, new families are recorded again.
        let later = t0 + WINDOW + Duration::from_secs(1);
        r.record("fresh", "eu-1", later);
        r.record("fresh", "eu-1", later);
        assert_eq!(r.cut_off("fresh", later), ["eu-1"]);
        assert_eq!(r.seen.lock().unwrap().len(), 1);
    }
}
