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
}

fn one() -> usize {
    1
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
