//! The life of the process around its requests (docs/design.md §11):
//!
//! - **shutdown grace**: on `SIGTERM` the proxy first fails `/healthz` and
//!   reports itself draining in its heartbeats, while it still accepts and
//!   serves, for `server.shutdown_grace_seconds`, so that health checks
//!   (Route 53: 3 failures × 10 s) and discovery take it out of rotation
//!   before any connection is refused; then Pingora closes the listeners
//!   and requests in flight get `server.shutdown_timeout_seconds` to end.
//!   The process exits as soon as no client connection is left (or when
//!   that timeout ends).
//! - **upgrade handover**: `SIGQUIT` hands the listening sockets to a new
//!   process started with `--upgrade` over `server.upgrade_socket`
//!   (Pingora), then ends like a `SIGTERM` without the health grace: the
//!   new process serves meanwhile, so the server never leaves rotation.
//! - **clients still locked here**: [`LockedClients`], the count an
//!   operator watches while a drain empties this server.
//!
//! Signals, as Pingora defines them: `SIGTERM` graceful terminate,
//! `SIGQUIT` graceful upgrade, `SIGINT` fast shutdown. A second `SIGTERM`
//! during the grace ends the grace at once; `SIGINT` at any time is fast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use prometheus::IntGauge;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{LifecycleConfig, ProxyConfig};
use crate::metrics::Metrics;

/// At most this many refresh families are tracked in [`LockedClients`].
pub const LOCKED_CLIENTS_CAP: usize = 100_000;

/// What the request path and the heartbeats read of the process's life.
pub struct Lifecycle {
    shutting_down: AtomicBool,
    shutting_down_gauge: IntGauge,
    /// Clients still locked to this server.
    pub locked: LockedClients,
    locked_gauge: IntGauge,
}

impl Lifecycle {
    pub fn new(cfg: &ProxyConfig, metrics: &Metrics) -> Lifecycle {
        Lifecycle {
            shutting_down: AtomicBool::new(false),
            shutting_down_gauge: metrics.register_gauge(
                IntGauge::new(
                    "shutting_down",
                    "1 from SIGTERM on: /healthz fails and heartbeats report draining",
                )
                .expect("static metric"),
            ),
            locked: LockedClients::new(cfg.tokens.access_ttl + cfg.tokens.leeway),
            locked_gauge: metrics.register_gauge(
                IntGauge::new(
                    "locked_clients",
                    "Distinct refresh families that sent a request locked to this server within the last access-token lifetime",
                )
                .expect("static metric"),
            ),
        }
    }

    /// Whether a `SIGTERM` started the shutdown grace: `/healthz` fails and
    /// heartbeats say draining. Only this process decides it; an
    /// operator's drain lives at discovery.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.shutting_down_gauge.set(1);
    }
}

/// The clients still locked to this server, counted as the distinct
/// refresh families (one per login session) that sent a request whose
/// token is locked here within the last access-token lifetime (plus the
/// leeway): a client that moved elsewhere stops counting once its last
/// access token for this server has expired, or at once when this proxy
/// answered the refresh that moved it. Bounded by [`LOCKED_CLIENTS_CAP`];
/// past it, new families are not tracked (the count reads as the cap).
pub struct LockedClients {
    window: Duration,
    seen: Mutex<HashMap<Box<str>, Instant>>,
}

impl LockedClients {
    pub fn new(window: Duration) -> LockedClients {
        LockedClients {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of `family` locked here (allocates only for a new family).
    pub fn seen(&self, family: &str) {
        let now = Instant::now();
        let mut m = self.map();
        if let Some(t) = m.get_mut(family) {
            *t = now;
            return;
        }
        if m.len() >= LOCKED_CLIENTS_CAP {
            let window = self.window;
            m.retain(|_, t| now.duration_since(*t) < window);
            if m.len() >= LOCKED_CLIENTS_CAP {
                return;
            }
        }
        m.insert(family.into(), now);
    }

    /// `family` was placed on another server by this proxy.
    pub fn moved(&self, family: &str) {
        self.map().remove(family);
    }

    /// The count now, forgetting families not seen within the window.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        let window = self.window;
        let mut m = self.map();
        m.retain(|_, t| now.duration_since(*t) < window);
        m.len()
    }
}

/// Pingora's signal semantics, with the health grace in front of
/// `SIGTERM` (see the module doc).
pub struct Signals {
    pub cfg: LifecycleConfig,
    pub lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers: shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {
                tracing::info!(
                    socket = %self.cfg.upgrade_socket.display(),
                    "SIGQUIT: handing the listening sockets to the new process"
                );
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: fast shutdown");
                return ShutdownSignal::FastShutdown;
            }
        }
        let lc = &self.cfg;
        self.lifecycle.begin_shutdown();
        tracing::info!(
            grace_s = lc.shutdown_grace.as_secs(),
            timeout_s = lc.shutdown_timeout.as_secs(),
            "SIGTERM: /healthz fails and heartbeats report draining; still serving until the grace ends, then the listeners close"
        );
        tokio::select! {
            _ = tokio::time::sleep(lc.shutdown_grace) => {}
            _ = term.recv() => tracing::info!("second SIGTERM: grace cut short"),
            _ = int.recv() => {
                tracing::info!("SIGINT: fast shutdown");
                return ShutdownSignal::FastShutdown;
            }
        }
        tracing::info!("shutdown grace over: closing the listeners");
        ShutdownSignal::GracefulTerminate
    }
}

/// Sets the `locked_clients` gauge every second; once Pingora closes the
/// listeners, ends the process as soon as no client connection is open
/// (Pingora itself would wait the whole `shutdown_timeout_seconds`).
pub struct Watcher {
    pub lifecycle: Arc<Lifecycle>,
    /// The `connections_open` gauge of [`crate::metrics::Metrics`].
    pub connections_open: IntGauge,
}

#[async_trait]
impl BackgroundService for Watcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let lc = &self.lifecycle;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => lc.locked_gauge.set(lc.locked.count() as i64),
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        // Connections accepted just before the listeners closed are
        // counted within a few milliseconds; give them that.
        tokio::time::sleep(Duration::from_millis(100)).await;
        loop {
            if self.connections_open.get() <= 0 {
                tracing::info!("listeners closed and no client connection left: exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks, before waiting for the old process's sockets, that the upgrade
/// socket can be created: Pingora would panic on it.
pub fn check_upgrade_socket(cfg: &LifecycleConfig) -> Result<(), String> {
    let path = &cfg.upgrade_socket;
    let dir = path
        .parent()
        .ok_or_else(|| format!("server.upgrade_socket {} has no directory", path.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "server.upgrade_socket {}: its directory {}: {e} (create it, or set server.upgrade_socket)",
            path.display(),
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "server.upgrade_socket {}: {} is not a directory",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_clients_count_distinct_families_and_forget_moved_ones() {
        let l = LockedClients::new(Duration::from_secs(60));
        l.seen("fam-a");
        l.seen("fam-a");
        l.seen("fam-b");
        assert_eq!(l.count(), 2);
        l.moved("fam-a");
        assert_eq!(l.count(), 1);
        l.moved("fam-unknown");
        assert_eq!(l.count(), 1);
    }

    #[test]
    fn locked_clients_age_out_after_the_window() {
        let l = LockedClients::new(Duration::ZERO);
        l.seen("fam-a");
        assert_eq!(l.count(), 0);
    }

    #[test]
    fn upgrade_socket_folder_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let ok = LifecycleConfig {
            shutdown_grace: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(1),
            upgrade_socket: dir.path().join("u.sock"),
        };
        assert!(check_upgrade_socket(&ok).is_ok());
        let missing = LifecycleConfig {
            upgrade_socket: dir.path().join("nope/u.sock"),
            ..ok
        };
        let e = check_upgrade_socket(&missing).unwrap_err();
        assert!(e.contains("server.upgrade_socket"), "{e}");
    }
}
