//! tether's lock-enforcing edge proxy, built on Pingora.
//!
//! One process = one *server*: a Pingora proxy in front of one upstream
//! pool (the unmodified app), with a stable id, a region and a public URL.
//! Every client request carries an access token whose `srv` claim names
//! the server the client is locked to; this crate decides, per request,
//! whether to forward it locally, hint a relock (421), forward it one hop
//! to the locked server, or ask the client to refresh (503).
//!
//! Where to start reading:
//! - [`service`]: the thin `ProxyHttp` impl; each phase delegates.
//! - [`lock`]: the per-request lock decision.
//! - [`tokens`]: minting and verifying JWTs.
//! - [`endpoints`]: `/auth/login`, `/auth/refresh`, `/auth/logout`,
//!   `/closestToMe`, `/healthz`.
//! - [`sync`]: heartbeats, registry polling, the `ArcSwap`ed snapshot.
//! - [`config`]: the TOML file and its validation.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod endpoints;
pub mod guard;
pub mod hop;
pub mod idempotency;
pub mod keys;
pub mod load;
pub mod lock;
pub mod metrics;
pub mod probe;
pub mod respond;
pub mod secrets;
pub mod service;
pub mod sync;
pub mod tls;
pub mod tokens;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;

use crate::config::ProxyConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream pool: {0}")]
    Upstream(String),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("TLS on the client listener: {0}")]
    Tls(String),
}

/// Everything the request path and the background tasks share.
pub struct State {
    pub cfg: ProxyConfig,
    /// The live key ring (reloaded on change or SIGHUP).
    pub tokens: keys::TokenStore,
    pub registry: sync::RegistryState,
    pub upstream: Arc<LoadBalancer<RoundRobin>>,
    pub metrics: metrics::Metrics,
    pub load: load::Load,
    pub prober: probe::Prober,
    pub hop_key: hop::HopKey,
    /// This server's id as the `X-Tether-Server` value, built once.
    pub server_header: http::HeaderValue,
    /// Derives rotated refresh-token ids; the same on every proxy.
    pub successor_key: [u8; 32],
    /// Calls to discovery (heartbeats, polls).
    pub discovery_http: reqwest::Client,
    /// Calls to the upstream's login path.
    pub upstream_http: reqwest::Client,
    /// Refresh families revoked by a logout at this proxy, with the time
    /// (Unix seconds) after which their tokens have expired anyway.
    pub revoked: Mutex<HashMap<String, u64>>,
}

impl State {
    pub fn new(
        cfg: ProxyConfig,
        upstream: Arc<LoadBalancer<RoundRobin>>,
    ) -> Result<Arc<State>, Error> {
        let discovery_http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let upstream_http = reqwest::Client::builder()
            .connect_timeout(cfg.upstream.connect_timeout)
            .timeout(cfg.upstream.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let state = Arc::new(State {
            tokens: keys::TokenStore::new(&cfg.tokens),
            registry: sync::RegistryState::new(sync::RegistryView::default()),
            upstream,
            metrics: metrics::Metrics::new(&cfg.server.id),
            load: load::Load::default(),
            prober: probe::Prober::new(
                cfg.routing.probe_timeout,
                tls::peer_client_config(cfg.routing.peer_ca_file.as_deref()),
            ),
            hop_key: hop::HopKey::derive(&cfg.discovery.cluster_token),
            // Server ids are [A-Za-z0-9._-] (validated), always a valid
            // header value.
            server_header: http::HeaderValue::from_str(&cfg.server.id)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            successor_key: {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                h.update(b"tether refresh successor v1\0");
                h.update(cfg.discovery.cluster_token.as_bytes());
                h.finalize().into()
            },
            discovery_http,
            upstream_http,
            revoked: Mutex::new(HashMap::new()),
            cfg,
        });
        Ok(state)
    }

    /// Whether at least one upstream passes its health check.
    pub fn upstream_healthy(&self) -> bool {
        self.upstream.select(b"", 256).is_some()
    }

    pub fn is_revoked(&self, family: &str) -> bool {
        match self.revoked.lock() {
            Ok(m) => m.contains_key(family),
            Err(poisoned) => poisoned.into_inner().contains_key(family),
        }
    }

    pub fn revoke(&self, family: &str, until: u64) {
        let mut m = match self.revoked.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = tokens::unix_now();
        m.retain(|_, &mut exp| exp > now);
        m.insert(family.to_owned(), until);
    }
}

/// Runs the proxy until SIGTERM/SIGINT. Pingora owns the process: its
/// runtimes, signal handling and graceful shutdown.
pub fn run(cfg: ProxyConfig) -> Result<(), Error> {
    let mut conf = ServerConf {
        threads: cfg.worker_threads.get(),
        // Measured on 2-core machines: no work stealing keeps a request on
        // one thread and avoids cross-thread wake-ups (shared/notes).
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 256;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let lb = upstream::build(&cfg.upstream).map_err(|e| Error::Upstream(e.to_string()))?;
    let lb_service = background_service("upstream health checks", lb);
    let lb = lb_service.task();

    let listen = cfg.listen.to_string();
    let admin_listen = cfg.admin_listen.to_string();
    let state = State::new(cfg, lb)?;
    let initial = sync::build_view(&state, Default::default(), false);
    state.registry.store_initial(initial);

    let sync_service = background_service(
        "registry sync",
        sync::SyncService {
            state: state.clone(),
        },
    );

    // Pingora's HTTP proxy app, behind the connection caps and the
    // request-head deadline (`guard`).
    let app = pingora_proxy::http_proxy(
        &server.configuration,
        service::TetherProxy {
            state: state.clone(),
        },
    );
    let limits = &state.cfg.limits;
    let m = &state.metrics;
    let guarded = guard::Guard::new(
        app,
        guard::ConnLimits {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            header_read_timeout: limits.header_read_timeout,
        },
        guard::GuardMetrics {
            open: m.connections_open.clone(),
            refused_total: m.connections_refused_total.clone(),
            refused_per_ip: m.connections_refused_per_ip.clone(),
            header_timeouts: m.header_timeouts.clone(),
        },
    );
    let mut proxy =
        pingora_core::services::listening::Service::new("tether proxy".to_owned(), guarded);
    match &state.cfg.tls {
        Some(files) => {
            let settings =
                tls::settings(&files.cert, &files.key).map_err(|e| Error::Tls(e.to_string()))?;
            proxy.add_tls_with_settings(&listen, None, settings);
        }
        None => proxy.add_tcp(&listen),
    }

    let mut admin = pingora_core::services::listening::Service::new(
        "tether admin".to_owned(),
        admin::Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&admin_listen);

    server.add_service(lb_service);
    server.add_service(sync_service);
    server.add_service(proxy);
    server.add_service(admin);
    tracing::info!(
        id = %state.cfg.server.id,
        region = %state.cfg.server.region,
        %listen,
        admin = %admin_listen,
        "tether proxy starting"
    );
    println!(
        "tether proxy {} listening on http://{listen} admin http://{admin_listen}",
        state.cfg.server.id
    );
    server.run_forever();
}
