//! The typed layer: the validated configuration the rest of the crate
//! sees. Token settings are the tokens module's own
//! ([`crate::tokens::TokenConfig`]).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::tokens::TokenConfig;

/// The validated proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub server: ServerIdentity,
    pub listen: SocketAddr,
    /// Certificate and key for HTTPS on `listen` (None: plain HTTP).
    pub tls: Option<TlsFiles>,
    pub admin_listen: SocketAddr,
    pub worker_threads: NonZeroUsize,
    pub upstream: UpstreamConfig,
    pub discovery: DiscoveryClientConfig,
    pub tokens: TokenConfig,
    pub login: LoginConfig,
    pub routing: RoutingConfig,
    pub limits: Limits,
    /// `[idempotency]` (docs/idempotency.md); on with the memory store
    /// when absent.
    pub idempotency: crate::idempotency::IdempotencyConfig,
    /// `[cors]`: browsers from other origins (off when no origin is listed).
    pub cors: crate::cors::CorsConfig,
    /// `[server]` shutdown and upgrade keys.
    pub lifecycle: super::lifecycle::LifecycleConfig,
    /// `[log]`: access log and format.
    pub log: crate::access::LogConfig,
}

/// Who this proxy is: the server a lock names.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub id: String,
    pub region: String,
    /// Public base URL, without a trailing slash.
    pub public_url: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `IP:PORT` or `HOST:PORT` (`crate::resolve`).
    pub addresses: Vec<crate::resolve::UpstreamAddr>,
    /// How often host names are resolved again.
    pub resolve_interval: Duration,
    pub health_path: String,
    pub health_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long an idle pooled connection to the app is kept; below the
    /// app's own keep-alive timeout.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DiscoveryClientConfig {
    /// Base URLs of the discovery nodes, without a trailing slash, in the
    /// order they are tried (`discovery.urls`, or the one `discovery.url`).
    pub urls: Vec<String>,
    pub cluster_token: String,
    pub heartbeat_interval: Duration,
    pub poll_wait: Duration,
    pub min_poll_interval: Duration,
    /// How long discovery must keep reporting an implausible registry
    /// (most servers gone at once) before the proxy believes it.
    pub implausible_accept_after: Duration,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// RFC 6901 pointer into the JSON body, e.g. `/user/id`.
    JsonPointer(String),
    /// A response header (lower-case).
    Header(String),
}

#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub upstream_path: String,
    pub subject: Source,
    pub home_region: Option<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignLock {
    /// Answer `421` with `Tether-Relock: <url>`.
    Redirect,
    /// Forward to the locked server's proxy (one authenticated hop).
    Forward,
}

#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub public_prefixes: Vec<String>,
    pub foreign_lock: ForeignLock,
    pub hysteresis: tether_protocol::placement::Hysteresis,
    pub probe_timeout: Duration,
    /// Probe servers a client reports unreachable (docs/design.md §5). When
    /// off, a dead server is only replaced once discovery evicts it.
    pub fast_failover: bool,
    /// Peers (load balancers, CDNs) whose `X-Forwarded-For`/`Forwarded`
    /// the proxy extends instead of replacing.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Extra CAs for `https://` peers' certificates, besides the system's.
    pub peer_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted on `/auth/*` (bytes).
    pub reserved_body_bytes: usize,
    /// Largest upstream login answer the proxy buffers (bytes).
    pub login_answer_bytes: usize,
    /// Request headers, total bytes (names + values) and count; over
    /// either is `431`.
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    /// From a request's first byte (a connection's first request: from
    /// accept) to the end of its head.
    pub header_read_timeout: std::time::Duration,
    /// Longest wait for the next piece of a request body once its head is
    /// in; a client that stalls longer gets `408` and the connection is
    /// closed (a client's slowness is never a 5xx).
    pub body_read_timeout: std::time::Duration,
    /// An HTTP/2 client connection with no open stream for this long is
    /// closed (Pingora drops the socket), so an idle client does not keep
    /// its connection slot.
    pub h2_idle_timeout: std::time::Duration,
    /// Concurrent client connections, in all and per client IP (0: no
    /// per-IP cap).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// PEM files for the client listener's TLS, checked at load: both parse,
/// and the key belongs to the certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `server.tls_http2`: offer `h2` by ALPN besides `http/1.1`.
    pub http2: bool,
}
