//! The discovery config: a TOML file read once at start-up.
//!
//! Two layers, so that only checked values reach the service: [`FileConfig`]
//! mirrors the file (serde, `deny_unknown_fields`), and [`FileConfig::validate`]
//! turns it into the typed [`Config`] (a `SocketAddr`, `Duration`s, secrets
//! already read). Every error names the file, the key, the bad value and what
//! is allowed, because the operator reading it has only the file in front of
//! them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The typed, validated discovery config. Durations are exact; every field
/// has been range-checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP listener binds (`discovery.listen`; default
    /// `127.0.0.1:7070`). Port 0 picks a free port; the ready line names it.
    pub listen: SocketAddr,
    /// Tokio worker threads for the binary's runtime (default 1: the service
    /// is small and one core absorbs well over the target heartbeat rate).
    pub worker_threads: usize,
    /// The heartbeat interval proxies are expected to use (default 2 s).
    /// Informational: discovery itself only enforces [`Config::ttl`].
    pub heartbeat_interval: Duration,
    /// A server silent for this long is evicted (default 3 × the interval).
    pub ttl: Duration,
    /// After start, `GET /v1/servers` answers 503 for this long while the
    /// registry refills from heartbeats (default: the TTL).
    pub warmup: Duration,
    /// Largest accepted request body, in bytes (default 64 KiB).
    pub max_body_bytes: usize,
    /// Cap on `?wait=` for long-polls (default 30 s).
    pub max_wait: Duration,
    /// Bearer token proxies present on heartbeats.
    pub cluster_token: Secret,
    /// Bearer token operators present on drain requests. Never equal to the
    /// cluster token, so a proxy cannot drain its peers.
    pub admin_token: Secret,
    /// How long after a refresh-token rotation a retry with the previous
    /// token still gets the same successor (default 10 s; 0–120 s).
    pub refresh_grace: Duration,
    /// Where the registry, drain marks and refresh families live
    /// (`[store]`; default: in this process's memory).
    pub store: StoreConfig,
}

/// `[store]`: the in-memory default, or an etcd cluster shared by any
/// number of discovery nodes (docs/design.md §6a).
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    #[default]
    Memory,
    Etcd(EtcdConfig),
}

/// `[store] kind = "etcd"`, checked: files already read.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key discovery writes starts with this (default `/tether/`).
    pub prefix: String,
    /// User name and password (read from `password_file`) when etcd has
    /// authentication on.
    pub user: Option<(String, Secret)>,
    /// PEM CA bundle that signs the members' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Connecting to one member (default 2 s).
    pub connect_timeout: Duration,
    /// One etcd request (default 2 s). A request that takes longer counts
    /// as an error; the HTTP answer is then 503.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Plain-text etcd at `endpoints`, defaults for everything else (tests,
    /// the demo).
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            user: None,
            ca_pem: None,
            identity_pem: None,
            connect_timeout: Duration::from_millis(DEFAULT_ETCD_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_ETCD_TIMEOUT_MS),
        }
    }
}

/// Default `[store] prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/tether/";
const DEFAULT_ETCD_TIMEOUT_MS: u64 = 2000;

impl Config {
    /// A config for in-process use (tests, the demo): listens on
    /// `127.0.0.1:0`, no warm-up, every other value at its default.
    pub fn loopback(cluster_token: impl Into<String>, admin_token: impl Into<String>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_threads: 1,
            heartbeat_interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            ttl: Duration::from_millis(DEFAULT_INTERVAL_MS * 3),
            warmup: Duration::ZERO,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_wait: Duration::from_secs(DEFAULT_MAX_WAIT_SECONDS),
            cluster_token: Secret::new(cluster_token),
            admin_token: Secret::new(admin_token),
            refresh_grace: Duration::from_millis(DEFAULT_REFRESH_GRACE_MS),
            store: StoreConfig::Memory,
        }
    }
}

/// A token read from a file or the environment. `Debug` never shows it, so a
/// logged config cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a config file was refused. Each message starts with the file path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrongly typed value.
    #[error("{}: {location}{message}", path.display())]
    Parse {
        path: PathBuf,
        /// `line N: ` when known, and the dotted key when known.
        location: String,
        message: String,
    },
    /// A value of the right type that is not allowed.
    #[error("{}: discovery.{key} = {value}: {allowed}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        allowed: String,
    },
    /// A `[store]` value that is not allowed.
    #[error("{}: store.{key} = {value}: {allowed}", path.display())]
    InvalidStore {
        path: PathBuf,
        key: &'static str,
        value: String,
        allowed: String,
    },
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
const DEFAULT_INTERVAL_MS: u64 = 2000;
const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_MAX_WAIT_SECONDS: u64 = 30;
/// Shorter tokens are refused: a cluster token is a shared secret that a
/// guessing attacker must not be able to enumerate.
pub const MIN_TOKEN_LEN: usize = 16;

/// The file as written. Only [`FileConfig::validate`] reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub discovery: DiscoverySection,
    #[serde(default)]
    pub store: Option<StoreSection>,
}

/// `[store]`. Optional; without it the registry lives in memory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `"memory"` (default) or `"etcd"`.
    pub kind: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
}

/// `[discovery]`. Every key is optional except the two token sources.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    pub listen: Option<String>,
    pub worker_threads: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub warmup_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_wait_seconds: Option<u64>,
    pub refresh_grace_ms: Option<u64>,
    pub cluster_token_env: Option<String>,
    pub cluster_token_file: Option<PathBuf>,
    pub admin_token_env: Option<String>,
    pub admin_token_file: Option<PathBuf>,
}

/// Reads `path` and [`parse`]s it.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates config text. `path` names the file in errors and
/// anchors relative `*_token_file` paths (they are relative to the config
/// file's folder, so a config works from any working directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, path, &|name| std::env::var(name).ok())
}

/// [`parse`] with environment look-ups supplied by the caller.
pub fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let parse_err = |location: String, message: String| ConfigError::Parse {
        path: path.to_owned(),
        location,
        message,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| parse_err(line_of(text, e.span()), e.message().trim().to_owned()))?;
    let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let mut location = line_of(text, inner.span());
        if !key.is_empty() && key != "." {
            location.push_str(&key);
            location.push_str(": ");
        }
        parse_err(location, inner.message().trim().to_owned())
    })?;
    file.validate(path, env)
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) if span.start <= text.len() => {
            let line = text.as_bytes()[..span.start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!("line {line}: ")
        }
        _ => String::new(),
    }
}

impl FileConfig {
    /// Checks every value and reads the secrets. `env` looks up environment
    /// variables (a parameter so tests need not touch the process
    /// environment).
    pub fn validate(
        self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let store = match self.store {
            None => StoreConfig::Memory,
            Some(section) => store_config(section, path)?,
        };
        let d = self.discovery;
        let invalid =
            |key: &'static str, value: &dyn fmt::Display, allowed: String| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                value: value.to_string(),
                allowed,
            };

        let listen_text = d.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                &format!("{listen_text:?}"),
                "must be an IP address and port, e.g. \"127.0.0.1:7070\" or \"[::]:7070\" (port 0 picks a free port)".into(),
            )
        })?;

        let worker_threads = d.worker_threads.unwrap_or(1);
        if !(1..=256).contains(&worker_threads) {
            return Err(invalid(
                "worker_threads",
                &worker_threads,
                "must be 1..=256".into(),
            ));
        }

        let interval_ms = d.heartbeat_interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        if !(10..=600_000).contains(&interval_ms) {
            return Err(invalid(
                "heartbeat_interval_ms",
                &interval_ms,
                "must be 10..=600000 (10 ms to 10 minutes)".into(),
            ));
        }
        let ttl_ms = d.ttl_ms.unwrap_or(interval_ms.saturating_mul(3));
        if ttl_ms < interval_ms {
            return Err(invalid(
                "ttl_ms",
                &ttl_ms,
                format!("must be at least heartbeat_interval_ms ({interval_ms}); 3x the interval is usual"),
            ));
        }
        if ttl_ms > 3_600_000 {
            return Err(invalid(
                "ttl_ms",
                &ttl_ms,
                "must be at most 3600000 (one hour)".into(),
            ));
        }
        let warmup_ms = d.warmup_ms.unwrap_or(ttl_ms);
        if warmup_ms > 3_600_000 {
            return Err(invalid(
                "warmup_ms",
                &warmup_ms,
                format!("must be 0..=3600000; the TTL ({ttl_ms}) is usual, 0 turns warm-up off"),
            ));
        }

        let max_body = d.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES as u64);
        if !(1024..=16 * 1024 * 1024).contains(&max_body) {
            return Err(invalid(
                "max_body_bytes",
                &max_body,
                "must be 1024..=16777216 (1 KiB to 16 MiB); a heartbeat is well under 1 KiB".into(),
            ));
        }
        // In range 1 KiB..=16 MiB, so it fits a usize on every platform.
        let max_body_bytes = usize::try_from(max_body).unwrap_or(DEFAULT_MAX_BODY_BYTES);

        let max_wait = d.max_wait_seconds.unwrap_or(DEFAULT_MAX_WAIT_SECONDS);
        if !(1..=300).contains(&max_wait) {
            return Err(invalid(
                "max_wait_seconds",
                &max_wait,
                "must be 1..=300".into(),
            ));
        }

        let grace_ms = d.refresh_grace_ms.unwrap_or(DEFAULT_REFRESH_GRACE_MS);
        if grace_ms > 120_000 {
            return Err(invalid(
                "refresh_grace_ms",
                &grace_ms,
                "must be 0..=120000: a long window lets a stolen refresh token ride along".into(),
            ));
        }

        let cluster_token = secret(
            path,
            env,
            ("cluster_token_env", d.cluster_token_env),
            ("cluster_token_file", d.cluster_token_file),
        )?;
        let admin_token = secret(
            path,
            env,
            ("admin_token_env", d.admin_token_env),
            ("admin_token_file", d.admin_token_file),
        )?;
        if admin_token.0.as_bytes() == cluster_token.0.as_bytes() {
            return Err(invalid(
                "admin_token_env",
                &"(the same token as the cluster token)",
                "the admin token must differ from the cluster token, or every proxy could drain its peers".into(),
            ));
        }

        Ok(Config {
            listen,
            worker_threads: worker_threads as usize,
            heartbeat_interval: Duration::from_millis(interval_ms),
            ttl: Duration::from_millis(ttl_ms),
            warmup: Duration::from_millis(warmup_ms),
            max_body_bytes,
            max_wait: Duration::from_secs(max_wait),
            cluster_token,
            admin_token,
            refresh_grace: Duration::from_millis(grace_ms),
            store,
        })
    }
}

/// Checks `[store]` and reads the files it names (relative to the config
/// file's folder).
fn store_config(section: StoreSection, path: &Path) -> Result<StoreConfig, ConfigError> {
    let invalid = |key: &'static str, value: String, allowed: String| ConfigError::InvalidStore {
        path: path.to_owned(),
        key,
        value,
        allowed,
    };
    let kind = section.kind.as_deref().unwrap_or("memory");
    match kind {
        "memory" => {
            let etcd_only: [(&'static str, bool); 9] = [
                ("endpoints", section.endpoints.is_some()),
                ("prefix", section.prefix.is_some()),
                ("username", section.username.is_some()),
                ("password_file", section.password_file.is_some()),
                ("ca_file", section.ca_file.is_some()),
                ("cert_file", section.cert_file.is_some()),
                ("key_file", section.key_file.is_some()),
                ("connect_timeout_ms", section.connect_timeout_ms.is_some()),
                ("request_timeout_ms", section.request_timeout_ms.is_some()),
            ];
            if let Some((key, _)) = etcd_only.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    key,
                    "(set)".into(),
                    "only applies with kind = \"etcd\"; the memory store takes no other key".into(),
                ));
            }
            return Ok(StoreConfig::Memory);
        }
        "etcd" => {}
        other => {
            return Err(invalid(
                "kind",
                format!("{other:?}"),
                "must be \"memory\" (one process, the default) or \"etcd\" (any number of nodes over an etcd cluster)".into(),
            ))
        }
    }
    let endpoints = section.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(invalid(
            "endpoints",
            "(missing)".into(),
            "kind = \"etcd\" needs the members' client URLs, e.g. [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]".into(),
        ));
    }
    let mut tls = false;
    for e in &endpoints {
        let rest: &str = if let Some(rest) = e.strip_prefix("https://") {
            tls = true;
            rest
        } else {
            e.strip_prefix("http://").unwrap_or_default()
        };
        let host_port_ok = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_port_ok {
            return Err(invalid(
                "endpoints",
                format!("{e:?}"),
                "each endpoint is http://HOST:PORT or https://HOST:PORT (etcd's client URL), with no path".into(),
            ));
        }
    }
    let prefix = section
        .prefix
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
    if prefix.is_empty()
        || !prefix.ends_with('/')
        || prefix.len() > 128
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "prefix",
            format!("{prefix:?}"),
            "must end with \"/\", be at most 128 characters and hold no whitespace, e.g. \"/tether/\" (one prefix per deployment sharing the etcd cluster)".into(),
        ));
    }
    let read = |key: &'static str, file: &Path| -> Result<Vec<u8>, ConfigError> {
        let full = match path.parent() {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_owned(),
        };
        std::fs::read(&full).map_err(|e| {
            invalid(
                key,
                format!("{:?}", file.display().to_string()),
                format!(
                    "cannot read {} ({e}); relative paths start at the config file's folder",
                    full.display()
                ),
            )
        })
    };
    let user = match (section.username, section.password_file) {
        (None, None) => None,
        (Some(u), Some(f)) if !u.is_empty() => {
            let raw = read("password_file", &f)?;
            let password = String::from_utf8(raw)
                .map_err(|_| {
                    invalid(
                        "password_file",
                        format!("{:?}", f.display().to_string()),
                        "must hold the password as UTF-8 text".into(),
                    )
                })?
                .trim()
                .to_owned();
            if password.is_empty() {
                return Err(invalid(
                    "password_file",
                    format!("{:?}", f.display().to_string()),
                    "the file is empty".into(),
                ));
            }
            Some((u, Secret::new(password)))
        }
        (Some(u), Some(_)) => {
            return Err(invalid(
                "username",
                format!("{u:?}"),
                "must not be empty".into(),
            ))
        }
        (Some(u), None) => {
            return Err(invalid(
                "password_file",
                "(missing)".into(),
                format!("username = {u:?} needs password_file (a file holding the password; passwords are never written in the config)"),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "username",
                "(missing)".into(),
                "password_file needs a username".into(),
            ))
        }
    };
    let ca_pem = section
        .ca_file
        .as_deref()
        .map(|f| read("ca_file", f))
        .transpose()?;
    let identity_pem = match (section.cert_file, section.key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((read("cert_file", &c)?, read("key_file", &k)?)),
        (Some(_), None) => {
            return Err(invalid(
                "key_file",
                "(missing)".into(),
                "cert_file needs key_file (the client certificate's private key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "cert_file",
                "(missing)".into(),
                "key_file needs cert_file".into(),
            ))
        }
    };
    if !tls && (ca_pem.is_some() || identity_pem.is_some()) {
        return Err(invalid(
            "endpoints",
            format!("{:?}", endpoints[0]),
            "ca_file, cert_file and key_file take https:// endpoints".into(),
        ));
    }
    let timeout = |key: &'static str, v: Option<u64>| -> Result<Duration, ConfigError> {
        let ms = v.unwrap_or(DEFAULT_ETCD_TIMEOUT_MS);
        if !(50..=60_000).contains(&ms) {
            return Err(invalid(key, ms.to_string(), "must be 50..=60000".into()));
        }
        Ok(Duration::from_millis(ms))
    };
    Ok(StoreConfig::Etcd(EtcdConfig {
        endpoints,
        prefix,
        user,
        ca_pem,
        identity_pem,
        connect_timeout: timeout("connect_timeout_ms", section.connect_timeout_ms)?,
        request_timeout: timeout("request_timeout_ms", section.request_timeout_ms)?,
    }))
}

/// Default refresh-token grace window, ms.
pub const DEFAULT_REFRESH_GRACE_MS: u64 = 10_000;

/// Reads a token from exactly one of its two sources. Leading and trailing
/// whitespace is dropped (files usually end in a newline).
fn secret(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    (env_key, env_name): (&'static str, Option<String>),
    (file_key, file): (&'static str, Option<PathBuf>),
) -> Result<Secret, ConfigError> {
    let invalid = |key: &'static str, value: String, allowed: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        value,
        allowed,
    };
    let (key, value, raw) = match (env_name, file) {
        (Some(_), Some(f)) => {
            return Err(invalid(
                file_key,
                format!("{:?}", f.display().to_string()),
                format!("set either {env_key} or {file_key}, not both"),
            ))
        }
        (None, None) => {
            return Err(invalid(
                env_key,
                "(missing)".into(),
                format!(
                    "set {env_key} (the name of an environment variable holding the token) or {file_key} (a file holding it); tokens are never written in the config"
                ),
            ))
        }
        (Some(name), None) => {
            if name.is_empty() {
                return Err(invalid(env_key, "\"\"".into(), "must name an environment variable".into()));
            }
            let raw = env(&name).ok_or_else(|| {
                invalid(
                    env_key,
                    format!("{name:?}"),
                    format!("the environment variable {name} is not set; it must hold a token of at least {MIN_TOKEN_LEN} characters"),
                )
            })?;
            (env_key, format!("{name:?}"), raw)
        }
        (None, Some(file)) => {
            let full = match path.parent() {
                Some(dir) if file.is_relative() => dir.join(&file),
                _ => file.clone(),
            };
            let raw = std::fs::read_to_string(&full).map_err(|e| {
                invalid(
                    file_key,
                    format!("{:?}", file.display().to_string()),
                    format!("cannot read {} ({e}); it must hold a token of at least {MIN_TOKEN_LEN} characters (relative paths start at the config file's folder)", full.display()),
                )
            })?;
            (file_key, format!("{:?}", file.display().to_string()), raw)
        }
    };
    let token = raw.trim();
    if token.is_empty() {
        return Err(invalid(
            key,
            value,
            "the token is empty; it must be at least 16 characters".into(),
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(invalid(
            key,
            value,
            format!(
                "the token is {} characters; it must be at least {MIN_TOKEN_LEN}",
                token.len()
            ),
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            value,
            "the token contains whitespace or control characters, which cannot travel in an Authorization header".into(),
        ));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests;
