//! Prometheus metrics for one proxy, served on the admin listener.
//!
//! Per-request counters are resolved to plain `IntCounter`s at start-up so
//! the request path increments an atomic, with no label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tether_protocol::placement::Reason;
use tether_protocol::registry::SnapshotError;

/// How a client request ended, from the proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    RelockHint,
    ForwardedForeign,
    ServerUnavailable,
    UpstreamUnavailable,
    /// `502`: the local upstream's answer was bad or cut.
    UpstreamError,
    /// `504`: the local upstream did not answer in time.
    UpstreamTimeout,
    InvalidToken,
    Public,
    /// Answered by the proxy itself (`/auth/*`, `/closestToMe`, `/healthz`).
    Reserved,
    /// Refused for another reason (bad hop marker, loop, bad request).
    Refused,
    /// Answered by the `Idempotency-Key` check without reaching the app
    /// (a replay, or its 400, 409, 422 or 503: `idempotency_outcomes_total`
    /// says which).
    Idempotency,
}

impl Outcome {
    const ALL: [Outcome; 12] = [
        Outcome::Forwarded,
        Outcome::RelockHint,
        Outcome::ForwardedForeign,
        Outcome::ServerUnavailable,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::InvalidToken,
        Outcome::Public,
        Outcome::Reserved,
        Outcome::Refused,
        Outcome::Idempotency,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::RelockHint => "relock_hint",
            Outcome::ForwardedForeign => "forwarded_foreign",
            Outcome::ServerUnavailable => "server_unavailable",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::InvalidToken => "invalid_token",
            Outcome::Public => "public",
            Outcome::Reserved => "reserved",
            Outcome::Refused => "refused",
            Outcome::Idempotency => "idempotency",
        }
    }
}

/// Label values of the labelled counters, one enum per counter, so no
/// call site spells a label by hand.
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            /// Every value, for initialising the series at 0.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

labels! {
    /// `logins_total{outcome}`.
    Login {
        Ok => "ok",
        Rejected => "rejected",
        TooLarge => "too_large",
        UpstreamUnavailable => "upstream_unavailable",
        UpstreamError => "upstream_error",
        MappingFailed => "mapping_failed",
    }
}

labels! {
    /// `refresh_rejected_total{cause}`.
    RefreshRejected {
        TooLarge => "too_large",
        BadRequest => "bad_request",
        Revoked => "revoked",
        InvalidToken => "invalid_token",
        NoServer => "no_server",
        Reused => "reused",
        DiscoveryDown => "discovery_down",
    }
}

labels! {
    /// `keyring_reloads_total{result}`.
    KeyRingReload {
        Reloaded => "reloaded",
        Failed => "failed",
    }
}

labels! {
    /// `snapshots_rejected_total{reason}`.
    SnapshotRejected {
        Malformed => "malformed",
        BadEntry => "bad_entry",
        DuplicateId => "duplicate_id",
        VersionWentBack => "version_went_back",
        Empty => "empty",
        MassEviction => "mass_eviction",
    }
}

impl From<&SnapshotError> for SnapshotRejected {
    fn from(e: &SnapshotError) -> Self {
        match e {
            SnapshotError::BadEntry { .. } => SnapshotRejected::BadEntry,
            SnapshotError::DuplicateId(_) => SnapshotRejected::DuplicateId,
            SnapshotError::VersionWentBack { .. } => SnapshotRejected::VersionWentBack,
            SnapshotError::Empty { .. } => SnapshotRejected::Empty,
            SnapshotError::MassEviction { .. } => SnapshotRejected::MassEviction,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Series under their standard names, without the `tether_proxy_`
    /// prefix: `tether_build_info` and the `process_*` series.
    standard: Registry,
    outcomes: Vec<IntCounter>,
    pub upstream_seconds: Histogram,
    pub token_ok: IntCounter,
    pub token_invalid: IntCounter,
    decisions: Vec<IntCounter>,
    refresh_rejected: IntCounterVec,
    logins: IntCounterVec,
    pub registry_version: IntGauge,
    pub registry_staleness_seconds: prometheus::Gauge,
    pub heartbeat_failures: IntCounter,
    pub heartbeats_sent: IntCounter,
    pub poll_failures: IntCounter,
    snapshots_rejected: IntCounterVec,
    live_servers: IntGaugeVec,
    probes: IntCounterVec,
    pub load: prometheus::Gauge,
    keyring_reloads: IntCounterVec,
    /// Client connections being served now.
    pub connections_open: IntGauge,
    /// Connections refused at accept: over `max_connections`, over
    /// `max_connections_per_ip`.
    pub connections_refused_total: IntCounter,
    pub connections_refused_per_ip: IntCounter,
    /// Connections closed because a request head did not arrive in time.
    pub header_timeouts: IntCounter,
    /// Requests sent again on a fresh upstream connection (`retry`).
    pub upstream_retries: IntCounter,
}

impl Metrics {
    pub fn new(server_id: &str) -> Metrics {
        let registry = Registry::new_custom(
            Some("tether_proxy".into()),
            Some([("server".to_owned(), server_id.to_owned())].into()),
        )
        .unwrap_or_default();
        // Registering fresh metrics with distinct names in a fresh registry
        // cannot fail; if it ever did, the metric would only be missing
        // from /metrics, never break the proxy.
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!("metric registration failed: {e}");
            }
            c
        }
        let requests = reg(
            &registry,
            IntCounterVec::new(
                Opts::new("requests_total", "Client requests by outcome"),
                &["outcome"],
            )
            .expect("static metric"),
        );
        let outcomes = Outcome::ALL
            .iter()
            .map(|o| requests.with_label_values(&[o.label()]))
            .collect();
        let tokens = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "token_verifications_total",
                    "Access-token verifications by result",
                ),
                &["result"],
            )
            .expect("static metric"),
        );
        let decisions_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new("refresh_decisions_total", "Refresh placements by reason"),
                &["reason"],
            )
            .expect("static metric"),
        );
        let decisions = Reason::ALL
            .iter()
            .map(|r| decisions_vec.with_label_values(&[r.as_str()]))
            .collect();
        let refused = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "connections_refused_total",
                    "Client connections refused at accept, by the cap that was full",
                ),
                &["limit"],
            )
            .expect("static metric"),
        );
        let metrics = Metrics {
            standard: standard_registry("proxy"),
            outcomes,
            upstream_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "upstream_seconds",
                        "Time from choosing an upstream to its response header",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                )
                .expect("static metric"),
            ),
            token_ok: tokens.with_label_values(&["ok"]),
            token_invalid: tokens.with_label_values(&["invalid"]),
            decisions,
            refresh_rejected: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("refresh_rejected_total", "Refreshes refused, by cause"),
                    &["cause"],
                )
                .expect("static metric"),
            ),
            logins: reg(
                &registry,
                IntCounterVec::new(Opts::new("logins_total", "Logins by outcome"), &["outcome"])
                    .expect("static metric"),
            ),
            registry_version: reg(
                &registry,
                IntGauge::new(
                    "registry_version",
                    "Version of the registry snapshot in use",
                )
                .expect("static metric"),
            ),
            registry_staleness_seconds: reg(
                &registry,
                prometheus::Gauge::new(
                    "registry_staleness_seconds",
                    "Seconds since discovery last confirmed the snapshot in use",
                )
                .expect("static metric"),
            ),
            heartbeat_failures: reg(
                &registry,
                IntCounter::new(
                    "heartbeat_failures_total",
                    "Heartbeats that discovery did not accept",
                )
                .expect("static metric"),
            ),
            heartbeats_sent: reg(
                &registry,
                IntCounter::new("heartbeats_total", "Heartbeats accepted by discovery")
                    .expect("static metric"),
            ),
            poll_failures: reg(
                &registry,
                IntCounter::new("registry_poll_failures_total", "Registry polls that failed")
                    .expect("static metric"),
            ),
            snapshots_rejected: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "snapshots_rejected_total",
                        "Snapshots refused as implausible, by reason",
                    ),
                    &["reason"],
                )
                .expect("static metric"),
            ),
            live_servers: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("live_servers", "Live servers in the snapshot, by region"),
                    &["region"],
                )
                .expect("static metric"),
            ),
            probes: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("failover_probes_total", "Fast-failover probes by result"),
                    &["result"],
                )
                .expect("static metric"),
            ),
            load: reg(
                &registry,
                prometheus::Gauge::new("load", "Load reported in heartbeats")
                    .expect("static metric"),
            ),
            keyring_reloads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("keyring_reloads_total", "Key-ring reloads by result"),
                    &["result"],
                )
                .expect("static metric"),
            ),
            connections_open: reg(
                &registry,
                IntGauge::new("connections_open", "Client connections being served")
                    .expect("static metric"),
            ),
            connections_refused_total: refused.with_label_values(&["max_connections"]),
            connections_refused_per_ip: refused.with_label_values(&["max_connections_per_ip"]),
            header_timeouts: reg(
                &registry,
                IntCounter::new(
                    "header_timeouts_total",
                    "Connections closed because a request head took longer than limits.header_read_timeout_ms",
                )
                .expect("static metric"),
            ),
            upstream_retries: reg(
                &registry,
                IntCounter::new(
                    "upstream_retries_total",
                    "Requests sent again after a stale pooled upstream connection or a failed connect",
                )
                .expect("static metric"),
            ),
            registry,
        };
        metrics.zero_labelled_series();
        metrics
    }

    /// Creates every known label value of the labelled counters at 0, so
    /// a series exists before its first event (`increase()` then sees the
    /// first one).
    fn zero_labelled_series(&self) {
        for l in Login::ALL {
            self.logins.with_label_values(&[l.label()]);
        }
        for c in RefreshRejected::ALL {
            self.refresh_rejected.with_label_values(&[c.label()]);
        }
        for r in KeyRingReload::ALL {
            self.keyring_reloads.with_label_values(&[r.label()]);
        }
        for r in SnapshotRejected::ALL {
            self.snapshots_rejected.with_label_values(&[r.label()]);
        }
        for result in ["alive", "dead"] {
            self.probes.with_label_values(&[result]);
        }
    }

    /// The registry behind `/metrics` (prefix `tether_proxy_`, label
    /// `server`), for metrics defined elsewhere (idempotency).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn outcome(&self, o: Outcome) {
        // Index matches Outcome::ALL by construction.
        if let Some(c) = self.outcomes.get(o as usize) {
            c.inc();
        }
    }

    pub fn decision(&self, r: Reason) {
        if let Some(c) = self.decisions.get(r as usize) {
            c.inc();
        }
    }

    pub fn login(&self, l: Login) {
        self.logins.with_label_values(&[l.label()]).inc();
    }

    pub fn refresh_rejected(&self, cause: RefreshRejected) {
        self.refresh_rejected
            .with_label_values(&[cause.label()])
            .inc();
    }

    /// `failover_probes_total{result="alive"|"dead"}`.
    pub fn probe(&self, alive: bool) {
        let result = if alive { "alive" } else { "dead" };
        self.probes.with_label_values(&[result]).inc();
    }

    pub fn keyring_reload(&self, r: KeyRingReload) {
        self.keyring_reloads.with_label_values(&[r.label()]).inc();
    }

    pub fn snapshot_rejected(&self, reason: SnapshotRejected) {
        self.snapshots_rejected
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Replaces the `live_servers{region}` gauges with these counts.
    pub fn live_servers<'a>(&self, by_region: impl IntoIterator<Item = (&'a str, usize)>) {
        self.live_servers.reset();
        for (region, n) in by_region {
            self.live_servers.with_label_values(&[region]).set(n as i64);
        }
    }

    /// Registers a gauge that another module owns and sets (`lifecycle`).
    pub fn register_gauge(&self, g: IntGauge) -> IntGauge {
        if let Err(e) = self.registry.register(Box::new(g.clone())) {
            tracing::error!("metric registration failed: {e}");
        }
        g
    }

    /// Registers a metric another module owns (e.g.
    /// `crate::discovery_nodes::DiscoveryNodes`) so `/metrics` shows it.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            tracing::error!("metric registration failed: {e}");
        }
        c
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        let mut families = self.registry.gather();
        families.extend(self.standard.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        buf
    }
}

/// A registry with `tether_build_info{component,version} 1` and, on Linux,
/// the standard `process_*` series (CPU, memory, file descriptors, start
/// time). Shared in form with discovery's (`tether_discovery::metrics`).
fn standard_registry(component: &str) -> Registry {
    let r = Registry::new();
    let info = IntGaugeVec::new(
        Opts::new(
            "tether_build_info",
            "Build of the running tether process; always 1",
        ),
        &["component", "version"],
    )
    .expect("static metric");
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    if let Err(e) = r.register(Box::new(info)) {
        tracing::error!("metric registration failed: {e}");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::error!("process metrics registration failed: {e}");
    }
    r
}
