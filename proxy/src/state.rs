//! What the request path and the background services share ([`State`]),
//! and the errors of starting the proxy ([`Error`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;
use tether_protocol::wire::ServerEntry;

use crate::config::ProxyConfig;
use crate::hop::HopKey;
use crate::load::Load;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::registry::{RegistryState, RegistryView};
use crate::tls;
use crate::tokens::{unix_now, TokenStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream pool: {0}")]
    Upstream(String),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("TLS on the client listener: {0}")]
    Tls(String),
    #[error("{0}")]
    Idempotency(#[from] crate::idempotency::BuildError),
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// A listener's address is taken (or not ours to bind).
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Everything the request path and the background tasks share.
pub struct State {
    pub cfg: ProxyConfig,
    /// The live key ring (reloaded on change or SIGHUP).
    pub tokens: TokenStore,
    pub registry: RegistryState,
    pub upstream: Arc<LoadBalancer<RoundRobin>>,
    pub metrics: Metrics,
    pub load: Load,
    pub prober: Prober,
    pub hop_key: HopKey,
    /// This server's id as the `X-Tether-Server` value, built once.
    pub server_header: http::HeaderValue,
    /// Derives rotated refresh-token ids; the same on every proxy.
    pub successor_key: [u8; 32],
    /// Calls to discovery (heartbeats, polls).
    pub discovery_http: reqwest::Client,
    /// The discovery nodes and the one in use (`discovery.urls`).
    pub discovery: crate::discovery_nodes::DiscoveryNodes,
    /// Calls to the upstream's login path.
    pub upstream_http: reqwest::Client,
    /// Refresh families revoked by a logout at this proxy, with the time
    /// (Unix seconds) after which their tokens have expired anyway.
    pub revoked: Mutex<HashMap<String, u64>>,
    /// The `Idempotency-Key` engine; `None` when `[idempotency]` is off.
    pub idem: Option<Arc<crate::idempotency::Idempotency>>,
    /// Shutdown grace and the clients still locked here (`lifecycle`).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// The access log (`crate::access`), off unless `log.access = "on"`.
    pub access: crate::access::AccessLog,
    /// "Unreachable" reports per refresh family (`crate::reports`).
    pub unreachable_reports: crate::reports::UnreachableReports,
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
        let metrics = Metrics::new(&cfg.server.id);
        let idem = match cfg.idempotency.enabled {
            true => Some(crate::idempotency::Idempotency::new(
                cfg.idempotency.clone(),
                metrics.registry(),
            )?),
            false => None,
        };
        let lifecycle = Arc::new(crate::lifecycle::Lifecycle::new(&cfg, &metrics));
        let discovery = crate::discovery_nodes::DiscoveryNodes::new(&cfg.discovery.urls, &metrics);
        let state = Arc::new(State {
            discovery,
            tokens: TokenStore::new(&cfg.tokens),
            registry: RegistryState::new(RegistryView::default()),
            upstream,
            metrics,
            load: Load::default(),
            prober: Prober::new(
                cfg.routing.probe_timeout,
                tls::peer_client_config(cfg.routing.peer_ca_file.as_deref()),
            ),
            hop_key: HopKey::derive(&cfg.discovery.cluster_token),
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
            idem,
            lifecycle,
            unreachable_reports: Default::default(),
            access: crate::access::AccessLog::new(
                cfg.log.clone(),
                cfg.discovery.cluster_token.as_bytes(),
            ),
            cfg,
        });
        Ok(state)
    }

    /// Whether at least one upstream passes its health check.
    pub fn upstream_healthy(&self) -> bool {
        self.upstream.select(b"", 256).is_some()
    }

    /// This server as a registry entry: what a view holds for it when
    /// discovery does not list it (yet).
    pub fn self_entry(&self) -> ServerEntry {
        let me = &self.cfg.server;
        ServerEntry {
            id: me.id.clone(),
            region: me.region.clone(),
            url: me.public_url.clone(),
            load: self.load.value(),
            healthy: self.upstream_healthy(),
            draining: false,
            last_seen_ms: 0,
        }
    }

    /// Whether a logout at this proxy revoked the refresh family.
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
        let now = unix_now();
        m.retain(|_, &mut exp| exp > now);
        m.insert(family.to_owned(), until);
    }
}
