//! The discovery nodes a proxy talks to (`discovery.urls`,
//! docs/design.md §6a) and which one it uses now.
//!
//! Heartbeats, registry polls and family calls all go to the current node.
//! A node that fails to answer (connect error, timeout, any 5xx, including
//! `503 store_unavailable` from a node whose etcd has no quorum) is left
//! for the next one in the list, round the list; the callers' own backoff
//! (exponential, with jitter, bounded) paces the retries. Each switch is
//! logged at info and counted, and `tether_proxy_discovery_node{url}` is 1
//! for the node in use, 0 for the others.
//!
//! A switch keeps the registry version and ETag the poller holds: over
//! etcd they are the same on every node, so an unchanged registry is not
//! fetched again.
//!
//! The time since any node last answered is the length of the current
//! outage; `tokens.refresh_when_discovery_down = "extend"` is bounded by it
//! (`crate::endpoints::refresh`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

use crate::metrics::Metrics;

/// The configured discovery nodes and the one in use.
pub struct DiscoveryNodes {
    urls: Vec<String>,
    current: AtomicUsize,
    started: Instant,
    /// Milliseconds after `started` when a node last answered; u64::MAX:
    /// never.
    last_answer_ms: AtomicU64,
    in_use: Vec<IntGauge>,
    failovers: IntCounter,
    /// Bytes of registry answers received (`discovery_poll_bytes_total`).
    pub poll_bytes: IntCounter,
    /// Refreshes answered in "extend" mode (`refresh_extended_total`).
    pub extended: IntCounter,
}

impl DiscoveryNodes {
    /// The nodes of `urls` (at least one, validated by the config layer),
    /// starting with the first; registers their metrics with `metrics`.
    pub fn new(urls: &[String], metrics: &Metrics) -> DiscoveryNodes {
        let gauge = metrics.register(
            IntGaugeVec::new(
                Opts::new(
                    "discovery_node",
                    "1 for the discovery node this proxy uses now, 0 for the other configured ones",
                ),
                &["url"],
            )
            .expect("static metric"),
        );
        let in_use: Vec<IntGauge> = urls
            .iter()
            .map(|u| gauge.with_label_values(&[u.as_str()]))
            .collect();
        if let Some(first) = in_use.first() {
            first.set(1);
        }
        DiscoveryNodes {
            urls: urls.to_vec(),
            current: AtomicUsize::new(0),
            started: Instant::now(),
            last_answer_ms: AtomicU64::new(u64::MAX),
            in_use,
            failovers: metrics.register(
                IntCounter::new(
                    "discovery_failovers_total",
                    "Switches from one discovery node to the next after a failure",
                )
                .expect("static metric"),
            ),
            poll_bytes: metrics.register(
                IntCounter::new(
                    "discovery_poll_bytes_total",
                    "Body bytes of registry answers (snapshots and deltas) received from discovery",
                )
                .expect("static metric"),
            ),
            extended: metrics.register(
                IntCounter::new(
                    "refresh_extended_total",
                    "Refreshes answered while no discovery node answered: access token re-minted, refresh token not rotated",
                )
                .expect("static metric"),
            ),
        }
    }

    /// How many nodes are configured.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The node in use: its index (for [`DiscoveryNodes::failed`]) and
    /// base URL.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.urls.len().max(1);
        (i, self.urls.get(i).map_or("", String::as_str))
    }

    /// A node answered (any answer that is not a failure).
    pub fn answered(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_answer_ms.store(ms, Ordering::Relaxed);
    }

    /// Node `failed` did not answer (`why`): move to the next one, unless
    /// another caller has already moved off it (a heartbeat and a poll
    /// failing together switch once).
    pub fn failed(&self, failed: usize, why: &str) {
        let n = self.urls.len();
        if n < 2 {
            return;
        }
        let next = (failed + 1) % n;
        if self
            .current
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.failovers.inc();
        if let Some(g) = self.in_use.get(failed) {
            g.set(0);
        }
        if let Some(g) = self.in_use.get(next) {
            g.set(1);
        }
        tracing::info!(
            from = %self.urls[failed],
            to = %self.urls[next],
            "discovery node {} did not answer ({why}); using {} now",
            self.urls[failed],
            self.urls[next]
        );
    }

    /// How long no node has answered: since the last answer, or since
    /// start-up when none ever has.
    pub fn silence(&self) -> Duration {
        let now = self.started.elapsed();
        match self.last_answer_ms.load(Ordering::Relaxed) {
            u64::MAX => now,
            ms => now.saturating_sub(Duration::from_millis(ms)),
        }
    }
}

/// Whether an answer from a node counts as the node failing: no answer
/// (connect error, timeout, broken body) or a 5xx. A 4xx is the node
/// answering (the caller's mistake, the same on every node).
pub fn node_failed(result: &reqwest::Result<reqwest::Response>) -> Option<String> {
    match result {
        Ok(r) if r.status().is_server_error() => Some(format!("status {}", r.status())),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_moves_round_the_list_once_per_failure() {
        let m = Metrics::new("t");
        let urls: Vec<String> = ["http://a:1", "http://b:1", "http://c:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let nodes = DiscoveryNodes::new(&urls, &m);
        assert_eq!(nodes.current(), (0, "http://a:1"));
        nodes.failed(0, "refused");
        // A second caller that saw node 0 fail does not skip node 1.
        nodes.failed(0, "refused");
        assert_eq!(nodes.current(), (1, "http://b:1"));
        nodes.failed(1, "503");
        nodes.failed(2, "timeout");
        assert_eq!(nodes.current(), (0, "http://a:1"));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("tether_proxy_discovery_failovers_total{server=\"t\"} 3"));
        let node = |url: &str| {
            text.lines()
                .find(|l| l.starts_with("tether_proxy_discovery_node{") && l.contains(url))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(node("http://a:1").as_deref(), Some("1"), "{text}");
        assert_eq!(node("http://b:1").as_deref(), Some("0"), "{text}");
        assert_eq!(node("http://c:1").as_deref(), Some("0"), "{text}");
    }

    #[test]
    fn one_node_never_switches_and_silence_counts_from_the_last_answer() {
        let m = Metrics::new("t");
        let nodes = DiscoveryNodes::new(&["http://a:1".to_owned()], &m);
        nodes.failed(0, "refused");
        assert_eq!(nodes.current(), (0, "http://a:1"));
        nodes.answered();
        assert!(nodes.silence() < Duration::from_secs(5));
    }
}
