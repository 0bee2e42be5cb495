//! Prometheus series of the discovery service, in a registry of its own (not
//! the process-global default) so that several services in one process —
//! tests, the demo — never mix their counts.
//!
//! Children of labelled series with a fixed label set are resolved once
//! here, so counting on the request path is one atomic add.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// How a heartbeat ended (`outcome` label of `heartbeats_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Accepted,
    BadRequest,
    Unauthorized,
    Conflict,
    TooLarge,
    /// The store could not record it (etcd without quorum): 503.
    Unavailable,
}

pub struct Metrics {
    registry: prometheus::Registry,
    hb_accepted: IntCounter,
    hb_bad_request: IntCounter,
    hb_unauthorized: IntCounter,
    hb_conflict: IntCounter,
    hb_too_large: IntCounter,
    hb_unavailable: IntCounter,
    live_servers: IntGaugeVec,
    evictions: IntCounter,
    snapshot_200: IntCounter,
    snapshot_304: IntCounter,
    snapshot_503: IntCounter,
    pub(crate) longpoll_waiters: IntGauge,
    registry_version: IntGauge,
    servers: IntGauge,
    families: IntCounterVec,
    store_seconds: HistogramVec,
    store_errors: IntCounterVec,
    store_leases: IntGaugeVec,
    store_families: IntGaugeVec,
    store_up: IntGauge,
    watch_restarts: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = prometheus::Registry::new();
        let heartbeats = IntCounterVec::new(
            Opts::new(
                "tether_discovery_heartbeats_total",
                "Heartbeats received, by outcome.",
            ),
            &["outcome"],
        )?;
        let live_servers = IntGaugeVec::new(
            Opts::new(
                "tether_discovery_live_servers",
                "Registered servers that report a healthy upstream, by region.",
            ),
            &["region"],
        )?;
        let evictions = IntCounter::new(
            "tether_discovery_evictions_total",
            "Servers evicted after a TTL without heartbeats.",
        )?;
        let snapshots = IntCounterVec::new(
            Opts::new(
                "tether_discovery_snapshot_requests_total",
                "GET /v1/servers answers, by status.",
            ),
            &["status"],
        )?;
        let longpoll_waiters = IntGauge::new(
            "tether_discovery_longpoll_waiters",
            "GET /v1/servers?wait= requests currently held open.",
        )?;
        let registry_version = IntGauge::new(
            "tether_discovery_registry_version",
            "Current registry version (Unix microseconds at start plus one per change).",
        )?;
        let servers = IntGauge::new(
            "tether_discovery_servers",
            "Registered servers, healthy or not.",
        )?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(live_servers.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(longpoll_waiters.clone()))?;
        registry.register(Box::new(registry_version.clone()))?;
        registry.register(Box::new(servers.clone()))?;
        let families = IntCounterVec::new(
            Opts::new(
                "tether_discovery_refresh_families_total",
                "Refresh-token family events: rotated, grace (a retry got the same successor), revoked (reuse or logout).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(families.clone()))?;
        let store_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tether_discovery_store_seconds",
                "Latency of store requests (etcd round trips), by operation.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["op"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "tether_discovery_store_errors_total",
                "Store requests that failed or timed out, by operation.",
            ),
            &["op"],
        )?;
        let store_leases = IntGaugeVec::new(
            Opts::new(
                "tether_discovery_store_leases",
                "etcd leases in use: kind=server (one per registered server, seen by this node), kind=family (expiry buckets this node granted for refresh families).",
            ),
            &["kind"],
        )?;
        let store_families = IntGaugeVec::new(
            Opts::new(
                "tether_discovery_store_families",
                "Refresh families stored, by state (live, revoked).",
            ),
            &["state"],
        )?;
        let store_up = IntGauge::new(
            "tether_discovery_store_up",
            "1 when the store answers (etcd: synced and linearizable reads succeed), else 0.",
        )?;
        let watch_restarts = IntCounter::new(
            "tether_discovery_store_watch_restarts_total",
            "Times this node's etcd watch was re-established (error, member loss or compaction).",
        )?;
        registry.register(Box::new(store_seconds.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(store_leases.clone()))?;
        registry.register(Box::new(store_families.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(watch_restarts.clone()))?;
        // Every known outcome exists from the start, at 0.
        for outcome in ["rotated", "grace", "revoked"] {
            families.with_label_values(&[outcome]);
        }
        let info = IntGaugeVec::new(
            Opts::new(
                "tether_build_info",
                "Build of the running tether process; always 1.",
            ),
            &["component", "version"],
        )?;
        info.with_label_values(&["discovery", env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(info))?;
        // The standard process_* series (CPU, memory, file descriptors).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            store_seconds,
            store_errors,
            store_leases,
            store_families,
            store_up,
            watch_restarts,
            hb_accepted: heartbeats.with_label_values(&["accepted"]),
            hb_bad_request: heartbeats.with_label_values(&["bad_request"]),
            hb_unauthorized: heartbeats.with_label_values(&["unauthorized"]),
            hb_conflict: heartbeats.with_label_values(&["conflict"]),
            hb_too_large: heartbeats.with_label_values(&["too_large"]),
            hb_unavailable: heartbeats.with_label_values(&["unavailable"]),
            snapshot_200: snapshots.with_label_values(&["200"]),
            snapshot_304: snapshots.with_label_values(&["304"]),
            snapshot_503: snapshots.with_label_values(&["503"]),
            registry,
            live_servers,
            evictions,
            longpoll_waiters,
            registry_version,
            servers,
            families,
        })
    }

    pub fn family_rotation(&self, outcome: tether_protocol::wire::RotateOutcome) {
        use tether_protocol::wire::RotateOutcome as O;
        let label = match outcome {
            O::Rotated => "rotated",
            O::Grace => "grace",
            O::Revoked => "revoked",
        };
        self.families.with_label_values(&[label]).inc();
    }

    pub fn heartbeat(&self, outcome: HeartbeatOutcome) {
        match outcome {
            HeartbeatOutcome::Accepted => &self.hb_accepted,
            HeartbeatOutcome::BadRequest => &self.hb_bad_request,
            HeartbeatOutcome::Unauthorized => &self.hb_unauthorized,
            HeartbeatOutcome::Conflict => &self.hb_conflict,
            HeartbeatOutcome::TooLarge => &self.hb_too_large,
            HeartbeatOutcome::Unavailable => &self.hb_unavailable,
        }
        .inc();
    }

    /// Counts a `GET /v1/servers` answer; only 200, 304 and 503 are series
    /// (a 400 for a bad `wait` is the client's mistake, not a snapshot).
    pub fn snapshot(&self, status: u16) {
        match status {
            200 => self.snapshot_200.inc(),
            304 => self.snapshot_304.inc(),
            503 => self.snapshot_503.inc(),
            _ => {}
        }
    }

    pub fn evicted(&self, n: u64) {
        self.evictions.inc_by(n);
    }

    pub fn set_live(&self, region: &str, live: i64) {
        self.live_servers.with_label_values(&[region]).set(live);
    }

    pub fn set_version(&self, version: u64) {
        // Versions are Unix microseconds (~2^51 today), far below i64::MAX.
        self.registry_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn set_servers(&self, n: usize) {
        self.servers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One store request: its latency, and whether it failed.
    pub fn store_op(&self, op: &str, seconds: f64, ok: bool) {
        self.store_seconds.with_label_values(&[op]).observe(seconds);
        if !ok {
            self.store_errors.with_label_values(&[op]).inc();
        }
    }

    pub fn set_store_leases(&self, kind: &str, n: usize) {
        self.store_leases
            .with_label_values(&[kind])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_store_families(&self, live: usize, revoked: usize) {
        self.store_families
            .with_label_values(&["live"])
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        self.store_families
            .with_label_values(&["revoked"])
            .set(i64::try_from(revoked).unwrap_or(i64::MAX));
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn watch_restarted(&self) {
        self.watch_restarts.inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::with_capacity(4096);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

/// Decrements the waiters gauge when a long-poll ends however it ends
/// (answered, timed out, or dropped because the client went away).
pub(crate) struct WaiterGuard<'a>(&'a IntGauge);

impl<'a> WaiterGuard<'a> {
    pub(crate) fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        WaiterGuard(gauge)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
