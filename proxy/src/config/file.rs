//! The file layer: the TOML file as serde reads it, with its defaults.
//! Unknown keys are refused (`deny_unknown_fields`); nothing is checked
//! here beyond types: [`super::validate`] turns it into the typed layer.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) server: FileServer,
    pub(super) upstream: FileUpstream,
    pub(super) discovery: FileDiscovery,
    pub(super) tokens: FileTokens,
    pub(super) login: FileLogin,
    #[serde(default)]
    pub(super) routing: FileRouting,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) idempotency: crate::idempotency::config::FileIdempotency,
    #[serde(default)]
    pub(super) cors: FileCors,
    #[serde(default)]
    pub(super) log: FileLog,
}

/// `[log]`: the access log and the log format (`crate::access`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLog {
    #[serde(default = "default_access")]
    pub(super) access: String,
    #[serde(default = "default_access_sample")]
    pub(super) access_sample: f64,
    #[serde(default = "default_access_subject")]
    pub(super) access_subject: String,
    #[serde(default = "default_log_format")]
    pub(super) format: String,
}

impl Default for FileLog {
    fn default() -> Self {
        FileLog {
            access: default_access(),
            access_sample: default_access_sample(),
            access_subject: default_access_subject(),
            format: default_log_format(),
        }
    }
}

fn default_access() -> String {
    "off".into()
}
fn default_access_sample() -> f64 {
    1.0
}
fn default_access_subject() -> String {
    "hash".into()
}
fn default_log_format() -> String {
    "text".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    pub(super) id: String,
    pub(super) region: String,
    pub(super) public_url: String,
    pub(super) listen: String,
    pub(super) admin_listen: String,
    #[serde(default = "one")]
    pub(super) worker_threads: usize,
    /// PEM certificate chain and private key: with both, `listen` serves
    /// HTTPS (rustls) instead of plain HTTP.
    pub(super) tls_cert_file: Option<String>,
    pub(super) tls_key_file: Option<String>,
    /// Offer HTTP/2 by ALPN on the TLS listener (default on).
    pub(super) tls_http2: Option<bool>,
    /// Shutdown and upgrade (docs/proxy.md, "Stopping and upgrading").
    #[serde(default = "default_shutdown_grace")]
    pub(super) shutdown_grace_seconds: u64,
    #[serde(default = "default_shutdown_timeout")]
    pub(super) shutdown_timeout_seconds: u64,
    #[serde(default = "default_upgrade_socket")]
    pub(super) upgrade_socket: String,
}

fn one() -> usize {
    1
}
fn default_shutdown_grace() -> u64 {
    super::lifecycle::DEFAULT_SHUTDOWN_GRACE_SECONDS
}
fn default_shutdown_timeout() -> u64 {
    super::lifecycle::DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
}
fn default_upgrade_socket() -> String {
    super::lifecycle::DEFAULT_UPGRADE_SOCKET.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub(super) addresses: Vec<String>,
    #[serde(default = "default_health_path")]
    pub(super) health_path: String,
    #[serde(default = "default_health_interval")]
    pub(super) health_interval_ms: u64,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    pub(super) read_timeout_ms: u64,
    #[serde(default = "default_upstream_idle_timeout")]
    pub(super) idle_timeout_ms: u64,
    #[serde(default = "default_resolve_interval")]
    pub(super) resolve_interval_ms: u64,
}

fn default_resolve_interval() -> u64 {
    5000
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval() -> u64 {
    1000
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_read_timeout() -> u64 {
    30_000
}
/// Below the keep-alive timeouts of common app servers (gunicorn 2 s,
/// Node and uvicorn 5 s), so the proxy drops an idle connection before
/// the app does (docs/design.md §12).
fn default_upstream_idle_timeout() -> u64 {
    1500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDiscovery {
    /// One discovery node (kept for existing configs), or several in
    /// `urls`: exactly one of the two.
    pub(super) url: Option<String>,
    pub(super) urls: Option<Vec<String>>,
    pub(super) cluster_token_file: Option<String>,
    pub(super) cluster_token_env: Option<String>,
    #[serde(default = "default_heartbeat")]
    pub(super) heartbeat_interval_ms: u64,
    #[serde(default = "default_poll_wait")]
    pub(super) poll_wait_seconds: u64,
    #[serde(default = "default_min_poll")]
    pub(super) min_poll_interval_ms: u64,
    #[serde(default = "default_accept_after")]
    pub(super) implausible_accept_after_seconds: u64,
}

fn default_heartbeat() -> u64 {
    2000
}
fn default_poll_wait() -> u64 {
    20
}
fn default_min_poll() -> u64 {
    200
}
fn default_accept_after() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTokens {
    pub(super) issuer: String,
    pub(super) audience: String,
    #[serde(default = "default_access_ttl")]
    pub(super) access_ttl_seconds: u64,
    #[serde(default = "default_refresh_ttl")]
    pub(super) refresh_ttl_days: u64,
    #[serde(default = "default_leeway")]
    pub(super) leeway_seconds: u64,
    pub(super) keyring_file: String,
    #[serde(default = "default_true")]
    pub(super) refresh_rotation: bool,
    #[serde(default = "default_down_policy")]
    pub(super) refresh_when_discovery_down: String,
    #[serde(default = "default_max_extend")]
    pub(super) max_extend_seconds: u64,
    #[serde(default = "default_cache_entries")]
    pub(super) verified_cache_entries: usize,
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_down_policy() -> String {
    "extend".into()
}

/// Six hours: covers a discovery or etcd outage through a night shift
/// (time to page someone and repair it), while bounding how long a copied
/// refresh token can go undetected to well under the refresh lifetime.
fn default_max_extend() -> u64 {
    21_600
}

fn default_access_ttl() -> u64 {
    120
}
fn default_refresh_ttl() -> u64 {
    14
}
fn default_leeway() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLogin {
    pub(super) upstream_path: String,
    pub(super) subject: FileSource,
    pub(super) home_region: Option<FileSource>,
}

/// Where a login field comes from in the upstream's login answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSource {
    pub(super) json_pointer: Option<String>,
    pub(super) header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRouting {
    #[serde(default)]
    pub(super) public_prefixes: Vec<String>,
    #[serde(default = "default_foreign")]
    pub(super) foreign_lock: String,
    #[serde(default = "default_ratio")]
    pub(super) hysteresis_ratio: f64,
    #[serde(default = "default_absolute")]
    pub(super) hysteresis_absolute: f64,
    #[serde(default = "default_probe_timeout")]
    pub(super) probe_timeout_ms: u64,
    #[serde(default = "default_true")]
    pub(super) fast_failover: bool,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    /// Extra CA certificates (PEM) trusted when probing `https://` peers.
    pub(super) peer_ca_file: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for FileRouting {
    fn default() -> Self {
        FileRouting {
            public_prefixes: Vec::new(),
            foreign_lock: default_foreign(),
            hysteresis_ratio: default_ratio(),
            hysteresis_absolute: default_absolute(),
            probe_timeout_ms: default_probe_timeout(),
            fast_failover: true,
            trusted_proxies: Vec::new(),
            peer_ca_file: None,
        }
    }
}

fn default_foreign() -> String {
    "redirect".into()
}
fn default_ratio() -> f64 {
    0.25
}
fn default_absolute() -> f64 {
    2.0
}
fn default_probe_timeout() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    #[serde(default = "default_body_limit")]
    pub(super) reserved_body_bytes: usize,
    #[serde(default = "default_login_answer")]
    pub(super) login_answer_bytes: usize,
    #[serde(default = "default_header_bytes")]
    pub(super) max_request_header_bytes: usize,
    #[serde(default = "default_header_count")]
    pub(super) max_request_headers: usize,
    #[serde(default = "default_header_read_timeout")]
    pub(super) header_read_timeout_ms: u64,
    #[serde(default = "default_body_read_timeout")]
    pub(super) body_read_timeout_ms: u64,
    #[serde(default = "default_h2_idle_timeout")]
    pub(super) h2_idle_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "default_max_connections_per_ip")]
    pub(super) max_connections_per_ip: usize,
}

fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_body_read_timeout() -> u64 {
    10_000
}
/// As an idle HTTP/1.1 keep-alive connection (Pingora's 60 s).
fn default_h2_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    1_000
}

fn default_header_bytes() -> usize {
    16 * 1024
}
fn default_header_count() -> usize {
    100
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            reserved_body_bytes: default_body_limit(),
            login_answer_bytes: default_login_answer(),
            max_request_header_bytes: default_header_bytes(),
            max_request_headers: default_header_count(),
            header_read_timeout_ms: default_header_read_timeout(),
            body_read_timeout_ms: default_body_read_timeout(),
            h2_idle_timeout_ms: default_h2_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

fn default_body_limit() -> usize {
    16 * 1024
}
fn default_login_answer() -> usize {
    1024 * 1024
}

/// `[cors]` (docs/design.md §10): off while `allowed_origins` is empty.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCors {
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    pub(super) max_age_seconds: u64,
    pub(super) allow_headers: Option<Vec<String>>,
}

fn default_cors_max_age() -> u64 {
    600
}

impl Default for FileCors {
    fn default() -> Self {
        FileCors {
            allowed_origins: Vec::new(),
            max_age_seconds: default_cors_max_age(),
            allow_headers: None,
        }
    }
}
