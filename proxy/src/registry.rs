//! The registry as the request path sees it, and the gate a new snapshot
//! passes before it is swapped in.
//!
//! The view lives in an `ArcSwap<RegistryView>` ([`RegistryState`]): the
//! request path reads it with one `load()` and never waits on discovery.
//! A new snapshot is checked ([`tether_protocol::registry::check_snapshot`])
//! by the [`Gate`] before the poller (`crate::sync::poll`) swaps it in;
//! when discovery is down, slow or sends something implausible the proxy
//! keeps the last good snapshot, and this server always counts as live
//! for its own locked clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tether_protocol::registry::{check_snapshot, Registry, SnapshotError};
use tether_protocol::wire::{ServerEntry, Snapshot};

/// The registry as the request path sees it.
#[derive(Debug, Default)]
pub struct RegistryView {
    pub registry: Registry,
    /// Socket addresses of peer proxies for forward mode, resolved when
    /// the snapshot arrived (never from client input).
    pub peers: HashMap<String, SocketAddr>,
}

impl RegistryView {
    /// A view of `snapshot`, with this server (`me_id`, described by `me`)
    /// added when discovery does not list it (yet): a proxy always knows
    /// itself.
    /// `me` is asked only when it is missing.
    pub fn new(
        mut snapshot: Snapshot,
        me_id: &str,
        me: impl FnOnce() -> ServerEntry,
        peers: HashMap<String, SocketAddr>,
    ) -> RegistryView {
        if !snapshot.servers.iter().any(|s| s.id == me_id) {
            snapshot.servers.push(me());
        }
        RegistryView {
            registry: Registry::new(snapshot),
            peers,
        }
    }
}

/// The hot-swapped registry plus bookkeeping for staleness.
pub struct RegistryState {
    current: ArcSwap<RegistryView>,
    started: Instant,
    /// Milliseconds after `started` when discovery last confirmed the
    /// snapshot (a 200 accepted or a 304); u64::MAX = never.
    last_contact_ms: AtomicU64,
}

impl RegistryState {
    pub fn new(initial: RegistryView) -> Self {
        RegistryState {
            current: ArcSwap::from_pointee(initial),
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The current view: one atomic load, no lock.
    pub fn load(&self) -> arc_swap::Guard<Arc<RegistryView>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<RegistryView> {
        self.current.load_full()
    }

    /// Replaces the view: the snapshot swap (the poller, and once at
    /// start-up).
    pub fn store(&self, view: RegistryView) {
        self.current.store(Arc::new(view));
    }

    /// Discovery confirmed the snapshot in use.
    pub fn mark_contact(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_contact_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since discovery last confirmed the snapshot; since start-up
    /// when it never has.
    pub fn staleness(&self) -> Duration {
        let now = self.started.elapsed();
        match self.last_contact_ms.load(Ordering::Relaxed) {
            u64::MAX => now,
            ms => now.saturating_sub(Duration::from_millis(ms)),
        }
    }
}

/// The snapshot gate: whether a snapshot from discovery may replace the
/// current registry.
///
/// A plausible snapshot passes. Malformed entries are never believed. An
/// implausible but well-formed registry (empty, most servers gone at
/// once, the version gone back) that discovery keeps reporting for
/// `accept_after` is the truth (a real mass outage, a discovery restart)
/// and passes too. The clock starts at the first refused snapshot and
/// stops at the next one that passes.
#[derive(Debug)]
pub struct Gate {
    accept_after: Duration,
    implausible_since: Option<Instant>,
}

/// What the gate says about one snapshot.
#[derive(Debug)]
pub enum Passage {
    /// Plausible: swap it in.
    Pass,
    /// Implausible, but reported for `reported_for`, at least the
    /// configured time: swap it in.
    Believed {
        error: SnapshotError,
        reported_for: Duration,
    },
    /// Keep the current registry.
    Refused(SnapshotError),
}

impl Gate {
    pub fn new(accept_after: Duration) -> Gate {
        Gate {
            accept_after,
            implausible_since: None,
        }
    }

    /// Judges `next` against the `current` registry at time `now`.
    pub fn judge(&mut self, current: &Registry, next: &Snapshot, now: Instant) -> Passage {
        let passage = match check_snapshot(current, next) {
            Ok(()) => Passage::Pass,
            Err(error) => {
                let persistent = matches!(
                    error,
                    SnapshotError::Empty { .. }
                        | SnapshotError::MassEviction { .. }
                        | SnapshotError::VersionWentBack { .. }
                );
                let since = *self.implausible_since.get_or_insert(now);
                let reported_for = now.saturating_duration_since(since);
                if !(persistent && reported_for >= self.accept_after) {
                    return Passage::Refused(error);
                }
                Passage::Believed {
                    error,
                    reported_for,
                }
            }
        };
        self.implausible_since = None;
        passage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            region: "eu".into(),
            url: format!("http://127.0.0.1:1/{id}"),
            load: 0.0,
            healthy: true,
            draining: false,
            last_seen_ms: 0,
        }
    }

    fn snapshot(version: u64, ids: &[&str]) -> Snapshot {
        Snapshot {
            version,
            servers: ids.iter().map(|id| entry(id)).collect(),
            revoked_families: vec![],
        }
    }

    fn six() -> Registry {
        Registry::new(snapshot(5, &["a", "b", "c", "d", "e", "f"]))
    }

    const AFTER: Duration = Duration::from_secs(30);

    #[test]
    fn a_plausible_snapshot_passes() {
        let mut gate = Gate::new(AFTER);
        let next = snapshot(6, &["a", "b", "c", "d", "e"]);
        assert!(matches!(
            gate.judge(&six(), &next, Instant::now()),
            Passage::Pass
        ));
    }

    #[test]
    fn an_implausible_snapshot_is_believed_after_the_configured_time() {
        let mut gate = Gate::new(AFTER);
        let current = six();
        let gone = snapshot(6, &["a"]);
        let t0 = Instant::now();
        assert!(matches!(
            gate.judge(&current, &gone, t0),
            Passage::Refused(SnapshotError::MassEviction {
                gone: 5,
                previous: 6
            })
        ));
        // Still refused just before the time is up, counted from the
        // first refusal.
        assert!(matches!(
            gate.judge(&current, &gone, t0 + AFTER - Duration::from_millis(1)),
            Passage::Refused(_)
        ));
        match gate.judge(&current, &gone, t0 + AFTER) {
            Passage::Believed {
                error: SnapshotError::MassEviction { .. },
                reported_for,
            } => assert_eq!(reported_for, AFTER),
            other => panic!("expected the mass eviction believed, got {other:?}"),
        }
        // Believing it stopped the clock: the next implausible snapshot
        // waits again.
        assert!(matches!(
            gate.judge(&current, &gone, t0 + AFTER + Duration::from_secs(1)),
            Passage::Refused(_)
        ));
    }

    #[test]
    fn empty_and_older_snapshots_are_believed_in_time_too() {
        let current = six();
        for next in [
            snapshot(6, &[]),
            snapshot(4, &["a", "b", "c", "d", "e", "f"]),
        ] {
            let mut gate = Gate::new(AFTER);
            let t0 = Instant::now();
            assert!(matches!(
                gate.judge(&current, &next, t0),
                Passage::Refused(_)
            ));
            assert!(matches!(
                gate.judge(&current, &next, t0 + AFTER),
                Passage::Believed { .. }
            ));
        }
    }

    #[test]
    fn a_plausible_snapshot_restarts_the_clock() {
        let mut gate = Gate::new(AFTER);
        let current = six();
        let gone = snapshot(6, &["a"]);
        let t0 = Instant::now();
        assert!(matches!(
            gate.judge(&current, &gone, t0),
            Passage::Refused(_)
        ));
        assert!(matches!(
            gate.judge(
                &current,
                &snapshot(6, &["a", "b", "c", "d", "e", "f"]),
                t0 + AFTER / 2
            ),
            Passage::Pass
        ));
        assert!(matches!(
            gate.judge(&current, &gone, t0 + AFTER),
            Passage::Refused(_)
        ));
        assert!(matches!(
            gate.judge(&current, &gone, t0 + AFTER + AFTER),
            Passage::Believed { .. }
        ));
    }

    #[test]
    fn malformed_snapshots_are_never_believed() {
        let mut gate = Gate::new(AFTER);
        let current = six();
        let mut bad = snapshot(6, &["a", "b", "c", "d", "e", "f"]);
        bad.servers[2].url = "not a url".into();
        let twice = snapshot(6, &["a", "b", "a"]);
        let t0 = Instant::now();
        for later in [Duration::ZERO, AFTER, 100 * AFTER] {
            assert!(matches!(
                gate.judge(&current, &bad, t0 + later),
                Passage::Refused(SnapshotError::BadEntry { index: 2, .. })
            ));
            assert!(matches!(
                gate.judge(&current, &twice, t0 + later),
                Passage::Refused(SnapshotError::DuplicateId(_))
            ));
        }
    }

    #[test]
    fn a_view_always_holds_this_server() {
        let view = RegistryView::new(snapshot(1, &["b"]), "me", || entry("me"), HashMap::new());
        assert!(view.registry.get("me").is_some());
        let listed = RegistryView::new(
            snapshot(1, &["me", "b"]),
            "me",
            || panic!("listed: not asked"),
            HashMap::new(),
        );
        assert_eq!(listed.registry.len(), 2);
    }
}
