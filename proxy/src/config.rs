//! Proxy configuration: the TOML file layer (serde, `deny_unknown_fields`)
//! and the typed layer ([`ProxyConfig`]) that the rest of the crate sees.
//!
//! Every error names the file, the key, the bad value and what is allowed.
//! Relative paths (key ring, token files) resolve against the directory of
//! the config file, so `conf/` works from any working directory.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::tokens::{KeyRing, KeyRingError};

/// Access-token lifetime bounds (DESIGN.md §3), seconds.
pub const ACCESS_TTL_RANGE: (u64, u64) = (60, 300);
/// Refresh-token lifetime bounds, days.
pub const REFRESH_TTL_RANGE: (u64, u64) = (7, 30);
/// Largest allowed verification leeway, seconds.
pub const MAX_LEEWAY: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {key} = {value}: {allowed}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{path}: {key}: {source}")]
    KeyRing {
        path: String,
        key: &'static str,
        source: KeyRingError,
    },
}

// ---------------------------------------------------------------- file layer

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: FileServer,
    upstream: FileUpstream,
    discovery: FileDiscovery,
    tokens: FileTokens,
    login: FileLogin,
    #[serde(default)]
    routing: FileRouting,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    id: String,
    region: String,
    public_url: String,
    listen: String,
    admin_listen: String,
    #[serde(default = "one")]
    worker_threads: usize,
    /// PEM certificate chain and private key: with both, `listen` serves
    /// HTTPS (rustls) instead of plain HTTP.
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    addresses: Vec<String>,
    #[serde(default = "default_health_path")]
    health_path: String,
    #[serde(default = "default_health_interval")]
    health_interval_ms: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    read_timeout_ms: u64,
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
struct FileDiscovery {
    url: String,
    cluster_token_file: Option<String>,
    cluster_token_env: Option<String>,
    #[serde(default = "default_heartbeat")]
    heartbeat_interval_ms: u64,
    #[serde(default = "default_poll_wait")]
    poll_wait_seconds: u64,
    #[serde(default = "default_min_poll")]
    min_poll_interval_ms: u64,
    #[serde(default = "default_accept_after")]
    implausible_accept_after_seconds: u64,
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
struct FileTokens {
    issuer: String,
    audience: String,
    #[serde(default = "default_access_ttl")]
    access_ttl_seconds: u64,
    #[serde(default = "default_refresh_ttl")]
    refresh_ttl_days: u64,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    keyring_file: String,
    #[serde(default = "default_true")]
    refresh_rotation: bool,
    #[serde(default = "default_down_policy")]
    refresh_when_discovery_down: String,
    #[serde(default = "default_cache_entries")]
    verified_cache_entries: usize,
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_down_policy() -> String {
    "fail_closed".into()
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
struct FileLogin {
    upstream_path: String,
    subject: FileSource,
    home_region: Option<FileSource>,
}

/// Where a login field comes from in the upstream's login answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    json_pointer: Option<String>,
    header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouting {
    #[serde(default)]
    public_prefixes: Vec<String>,
    #[serde(default = "default_foreign")]
    foreign_lock: String,
    #[serde(default = "default_ratio")]
    hysteresis_ratio: f64,
    #[serde(default = "default_absolute")]
    hysteresis_absolute: f64,
    #[serde(default = "default_probe_timeout")]
    probe_timeout_ms: u64,
    #[serde(default = "default_true")]
    fast_failover: bool,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Extra CA certificates (PEM) trusted when probing `https://` peers.
    peer_ca_file: Option<String>,
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
struct FileLimits {
    #[serde(default = "default_body_limit")]
    reserved_body_bytes: usize,
    #[serde(default = "default_login_answer")]
    login_answer_bytes: usize,
    #[serde(default = "default_header_bytes")]
    max_request_header_bytes: usize,
    #[serde(default = "default_header_count")]
    max_request_headers: usize,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_connections_per_ip")]
    max_connections_per_ip: usize,
}

fn default_header_read_timeout() -> u64 {
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

// --------------------------------------------------------------- typed layer

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
    pub addresses: Vec<SocketAddr>,
    pub health_path: String,
    pub health_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DiscoveryClientConfig {
    /// Base URL, without a trailing slash.
    pub url: String,
    pub cluster_token: String,
    pub heartbeat_interval: Duration,
    pub poll_wait: Duration,
    pub min_poll_interval: Duration,
    /// How long discovery must keep reporting an implausible registry
    /// (most servers gone at once) before the proxy believes it.
    pub implausible_accept_after: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub leeway: Duration,
    pub keyring_path: PathBuf,
    pub keyring: KeyRing,
    /// Rotate refresh tokens at every refresh, with reuse detection kept
    /// in discovery (default on).
    pub refresh_rotation: bool,
    /// What a refresh does when discovery cannot be asked about the family.
    pub when_discovery_down: DownPolicy,
    /// Size of the verified-token cache for access tokens (0: off).
    pub verified_cache_entries: usize,
}

/// Refresh-token rotation when discovery is unreachable. Access tokens
/// already issued are never affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPolicy {
    /// Refuse refreshes (503) until discovery answers: reuse detection is
    /// never skipped (default).
    FailClosed,
    /// Rotate without reuse detection while discovery is away.
    FailOpen,
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
    /// Probe servers a client reports unreachable (DESIGN.md §5). When
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
}

/// Reads and validates a proxy config file.
pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, path)
}

/// Validates config text; `path` names the file in errors and anchors
/// relative paths.
pub fn parse(text: &str, path: &Path) -> Result<ProxyConfig, ConfigError> {
    let shown = path.display().to_string();
    let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: shown.clone(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    Validator { path: shown, base }.validate(file)
}

struct Validator<'a> {
    path: String,
    base: &'a Path,
}

impl Validator<'_> {
    fn bad(
        &self,
        key: &'static str,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn addr(&self, key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
        v.parse().map_err(|_| {
            self.bad(
                key,
                format!("{v:?}"),
                "must be IP:PORT, e.g. \"127.0.0.1:8081\"",
            )
        })
    }

    fn base_url(&self, key: &'static str, v: &str) -> Result<String, ConfigError> {
        tether_protocol::validate::server_url(key, v)
            .map_err(|e| self.bad(key, format!("{v:?}"), e.message))?;
        Ok(v.trim_end_matches('/').to_owned())
    }

    fn ms(&self, key: &'static str, v: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
        if v < min || v > max {
            return Err(self.bad(
                key,
                v,
                format!("must be between {min} and {max} (milliseconds)"),
            ));
        }
        Ok(Duration::from_millis(v))
    }

    fn secret(
        &self,
        file_key: &'static str,
        file: Option<&str>,
        env: Option<&str>,
    ) -> Result<String, ConfigError> {
        let value = match (file, env) {
            (Some(f), None) => {
                let p = self.resolve(f);
                std::fs::read_to_string(&p).map_err(|e| {
                    self.bad(
                        file_key,
                        format!("{f:?}"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                self.bad(
                    file_key,
                    "(unset)",
                    format!("environment variable {var} (named by the _env key) is not set"),
                )
            })?,
            _ => {
                return Err(self.bad(
                    file_key,
                    "(both or neither)",
                    "set exactly one of cluster_token_file and cluster_token_env",
                ))
            }
        };
        let value = value.trim().to_owned();
        if value.len() < 16 {
            return Err(self.bad(
                file_key,
                "(secret)",
                "the cluster token must be at least 16 characters",
            ));
        }
        Ok(value)
    }

    fn source(&self, key: &'static str, s: &FileSource) -> Result<Source, ConfigError> {
        match (&s.json_pointer, &s.header) {
            (Some(p), None) => {
                if !(p.is_empty() || p.starts_with('/')) {
                    return Err(self.bad(
                        key,
                        format!("{p:?}"),
                        "a JSON pointer is empty or starts with '/', e.g. \"/userId\"",
                    ));
                }
                Ok(Source::JsonPointer(p.clone()))
            }
            (None, Some(h)) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(self.bad(
                        key,
                        format!("{h:?}"),
                        "must be a valid HTTP header name",
                    ));
                }
                Ok(Source::Header(h.to_ascii_lowercase()))
            }
            _ => Err(self.bad(
                key,
                "(both or neither)",
                "set exactly one of json_pointer and header",
            )),
        }
    }

    /// `server.tls_cert_file` + `server.tls_key_file`: both or neither;
    /// both readable PEM, the key matching the certificate, so a bad file
    /// is a config error here rather than a failure at start.
    fn tls(&self, s: &FileServer) -> Result<Option<TlsFiles>, ConfigError> {
        let (cert, key) = match (&s.tls_cert_file, &s.tls_key_file) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (self.resolve(c), self.resolve(k)),
            (Some(_), None) => {
                return Err(self.bad(
                    "server.tls_key_file",
                    "(missing)",
                    "set it with server.tls_cert_file, or remove both for plain HTTP",
                ))
            }
            (None, Some(_)) => {
                return Err(self.bad(
                    "server.tls_cert_file",
                    "(missing)",
                    "set it with server.tls_key_file, or remove both for plain HTTP",
                ))
            }
        };
        crate::tls::check_pair(&cert, &key).map_err(|(key_name, message)| {
            let shown = if key_name == "server.tls_key_file" {
                &key
            } else {
                &cert
            };
            self.bad(key_name, shown.display(), message)
        })?;
        Ok(Some(TlsFiles { cert, key }))
    }

    fn validate(self, f: FileConfig) -> Result<ProxyConfig, ConfigError> {
        let check_field =
            |key: &'static str, r: Result<(), tether_protocol::validate::FieldError>, v: &str| {
                r.map_err(|e| self.bad(key, format!("{v:?}"), e.message))
            };
        check_field(
            "server.id",
            tether_protocol::validate::server_id("id", &f.server.id),
            &f.server.id,
        )?;
        check_field(
            "server.region",
            tether_protocol::validate::region("region", &f.server.region),
            &f.server.region,
        )?;
        let public_url = self.base_url("server.public_url", &f.server.public_url)?;
        let listen = self.addr("server.listen", &f.server.listen)?;
        let admin_listen = self.addr("server.admin_listen", &f.server.admin_listen)?;
        if listen == admin_listen && listen.port() != 0 {
            return Err(self.bad(
                "server.admin_listen",
                &f.server.admin_listen,
                "must differ from server.listen",
            ));
        }
        let worker_threads = NonZeroUsize::new(f.server.worker_threads)
            .filter(|n| n.get() <= 256)
            .ok_or_else(|| {
                self.bad(
                    "server.worker_threads",
                    f.server.worker_threads,
                    "must be between 1 and 256",
                )
            })?;

        if f.upstream.addresses.is_empty() {
            return Err(self.bad(
                "upstream.addresses",
                "[]",
                "list at least one upstream IP:PORT",
            ));
        }
        let addresses = f
            .upstream
            .addresses
            .iter()
            .map(|a| self.addr("upstream.addresses", a))
            .collect::<Result<Vec<_>, _>>()?;
        if !f.upstream.health_path.starts_with('/') {
            return Err(self.bad(
                "upstream.health_path",
                format!("{:?}", f.upstream.health_path),
                "must start with '/'",
            ));
        }
        let upstream = UpstreamConfig {
            addresses,
            health_path: f.upstream.health_path,
            health_interval: self.ms(
                "upstream.health_interval_ms",
                f.upstream.health_interval_ms,
                100,
                60_000,
            )?,
            connect_timeout: self.ms(
                "upstream.connect_timeout_ms",
                f.upstream.connect_timeout_ms,
                10,
                60_000,
            )?,
            read_timeout: self.ms(
                "upstream.read_timeout_ms",
                f.upstream.read_timeout_ms,
                100,
                600_000,
            )?,
        };

        let d = &f.discovery;
        let discovery = DiscoveryClientConfig {
            url: self.base_url("discovery.url", &d.url)?,
            cluster_token: self.secret(
                "discovery.cluster_token_file",
                d.cluster_token_file.as_deref(),
                d.cluster_token_env.as_deref(),
            )?,
            heartbeat_interval: self.ms(
                "discovery.heartbeat_interval_ms",
                d.heartbeat_interval_ms,
                100,
                60_000,
            )?,
            poll_wait: {
                if d.poll_wait_seconds > 60 {
                    return Err(self.bad(
                        "discovery.poll_wait_seconds",
                        d.poll_wait_seconds,
                        "must be between 0 and 60",
                    ));
                }
                Duration::from_secs(d.poll_wait_seconds)
            },
            min_poll_interval: self.ms(
                "discovery.min_poll_interval_ms",
                d.min_poll_interval_ms,
                10,
                60_000,
            )?,
            implausible_accept_after: Duration::from_secs(d.implausible_accept_after_seconds),
        };

        let t = &f.tokens;
        if t.issuer.is_empty() {
            return Err(self.bad("tokens.issuer", "\"\"", "must not be empty"));
        }
        if t.audience.is_empty() {
            return Err(self.bad("tokens.audience", "\"\"", "must not be empty"));
        }
        if !(ACCESS_TTL_RANGE.0..=ACCESS_TTL_RANGE.1).contains(&t.access_ttl_seconds) {
            return Err(self.bad(
                "tokens.access_ttl_seconds",
                t.access_ttl_seconds,
                format!(
                    "must be between {} and {} seconds",
                    ACCESS_TTL_RANGE.0, ACCESS_TTL_RANGE.1
                ),
            ));
        }
        if !(REFRESH_TTL_RANGE.0..=REFRESH_TTL_RANGE.1).contains(&t.refresh_ttl_days) {
            return Err(self.bad(
                "tokens.refresh_ttl_days",
                t.refresh_ttl_days,
                format!(
                    "must be between {} and {} days",
                    REFRESH_TTL_RANGE.0, REFRESH_TTL_RANGE.1
                ),
            ));
        }
        if t.leeway_seconds > MAX_LEEWAY {
            return Err(self.bad(
                "tokens.leeway_seconds",
                t.leeway_seconds,
                format!("must be between 0 and {MAX_LEEWAY}"),
            ));
        }
        let keyring_path = self.resolve(&t.keyring_file);
        let keyring = KeyRing::load(&keyring_path).map_err(|source| ConfigError::KeyRing {
            path: self.path.clone(),
            key: "tokens.keyring_file",
            source,
        })?;
        let when_discovery_down = match t.refresh_when_discovery_down.as_str() {
            "fail_closed" => DownPolicy::FailClosed,
            "fail_open" => DownPolicy::FailOpen,
            other => {
                return Err(self.bad(
                    "tokens.refresh_when_discovery_down",
                    format!("{other:?}"),
                    "must be \"fail_closed\" or \"fail_open\"",
                ))
            }
        };
        if t.verified_cache_entries > 1_000_000 {
            return Err(self.bad(
                "tokens.verified_cache_entries",
                t.verified_cache_entries,
                "must be between 0 and 1000000",
            ));
        }
        let tokens = TokenConfig {
            verified_cache_entries: t.verified_cache_entries,
            refresh_rotation: t.refresh_rotation,
            when_discovery_down,
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            access_ttl: Duration::from_secs(t.access_ttl_seconds),
            refresh_ttl: Duration::from_secs(t.refresh_ttl_days * 86_400),
            leeway: Duration::from_secs(t.leeway_seconds),
            keyring_path,
            keyring,
        };

        if !f.login.upstream_path.starts_with('/') {
            return Err(self.bad(
                "login.upstream_path",
                format!("{:?}", f.login.upstream_path),
                "must start with '/'",
            ));
        }
        let login = LoginConfig {
            upstream_path: f.login.upstream_path.clone(),
            subject: self.source("login.subject", &f.login.subject)?,
            home_region: f
                .login
                .home_region
                .as_ref()
                .map(|s| self.source("login.home_region", s))
                .transpose()?,
        };

        let r = &f.routing;
        for p in &r.public_prefixes {
            if !p.starts_with('/') || p.starts_with("/auth/") || p == "/" {
                return Err(self.bad(
                    "routing.public_prefixes",
                    format!("{p:?}"),
                    "each prefix starts with '/', is not '/' and is not under /auth/",
                ));
            }
        }
        let foreign_lock = match r.foreign_lock.as_str() {
            "redirect" => ForeignLock::Redirect,
            "forward" => ForeignLock::Forward,
            other => {
                return Err(self.bad(
                    "routing.foreign_lock",
                    format!("{other:?}"),
                    "must be \"redirect\" or \"forward\"",
                ))
            }
        };
        if !(r.hysteresis_ratio.is_finite() && (0.0..=10.0).contains(&r.hysteresis_ratio)) {
            return Err(self.bad(
                "routing.hysteresis_ratio",
                r.hysteresis_ratio,
                "must be between 0 and 10",
            ));
        }
        if !(r.hysteresis_absolute.is_finite() && r.hysteresis_absolute >= 0.0) {
            return Err(self.bad(
                "routing.hysteresis_absolute",
                r.hysteresis_absolute,
                "must be a number >= 0",
            ));
        }
        let routing = RoutingConfig {
            public_prefixes: r.public_prefixes.clone(),
            foreign_lock,
            hysteresis: tether_protocol::placement::Hysteresis {
                ratio: r.hysteresis_ratio,
                absolute: r.hysteresis_absolute,
            },
            probe_timeout: self.ms("routing.probe_timeout_ms", r.probe_timeout_ms, 10, 10_000)?,
            fast_failover: r.fast_failover,
            peer_ca_file: match &r.peer_ca_file {
                None => None,
                Some(f) => {
                    let path = self.resolve(f);
                    crate::tls::check_ca(&path)
                        .map_err(|m| self.bad("routing.peer_ca_file", path.display(), m))?;
                    Some(path)
                }
            },
            trusted_proxies: r
                .trusted_proxies
                .iter()
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            self.bad(
                                "routing.trusted_proxies",
                                format!("{n:?}"),
                                "each entry is an IP or a CIDR network, e.g. \"10.0.0.0/8\"",
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };

        let limits = Limits {
            reserved_body_bytes: match f.limits.reserved_body_bytes {
                n @ 256..=1_048_576 => n,
                n => {
                    return Err(self.bad(
                        "limits.reserved_body_bytes",
                        n,
                        "must be between 256 and 1048576",
                    ))
                }
            },
            login_answer_bytes: match f.limits.login_answer_bytes {
                n @ 1024..=16_777_216 => n,
                n => {
                    return Err(self.bad(
                        "limits.login_answer_bytes",
                        n,
                        "must be between 1024 and 16777216",
                    ))
                }
            },
            max_request_header_bytes: match f.limits.max_request_header_bytes {
                n @ 1024..=1_048_576 => n,
                n => {
                    return Err(self.bad(
                        "limits.max_request_header_bytes",
                        n,
                        "must be between 1024 and 1048576",
                    ))
                }
            },
            max_request_headers: match f.limits.max_request_headers {
                n @ 8..=256 => n,
                n => {
                    return Err(self.bad(
                        "limits.max_request_headers",
                        n,
                        "must be between 8 and 256 (Pingora reads at most 256)",
                    ))
                }
            },
            header_read_timeout: match f.limits.header_read_timeout_ms {
                n @ 100..=600_000 => std::time::Duration::from_millis(n),
                n => {
                    return Err(self.bad(
                        "limits.header_read_timeout_ms",
                        n,
                        "must be between 100 and 600000",
                    ))
                }
            },
            max_connections: match f.limits.max_connections {
                n @ 1..=1_000_000 => n,
                n => {
                    return Err(self.bad(
                        "limits.max_connections",
                        n,
                        "must be between 1 and 1000000",
                    ))
                }
            },
            max_connections_per_ip: match f.limits.max_connections_per_ip {
                n if n <= f.limits.max_connections => n,
                n => {
                    return Err(self.bad(
                        "limits.max_connections_per_ip",
                        n,
                        "must be at most limits.max_connections (0: no per-IP cap)",
                    ))
                }
            },
        };
        let tls = self.tls(&f.server)?;

        Ok(ProxyConfig {
            server: ServerIdentity {
                id: f.server.id,
                region: f.server.region,
                public_url,
            },
            listen,
            tls,
            admin_listen,
            worker_threads,
            upstream,
            discovery,
            tokens,
            login,
            routing,
            limits,
        })
    }
}

#[cfg(test)]
mod tests;
