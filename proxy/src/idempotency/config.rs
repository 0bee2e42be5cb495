//! The `[idempotency]` table: the file layer ([`FileIdempotency`], serde
//! with `deny_unknown_fields`) and the typed layer ([`IdempotencyConfig`])
//! that the rest of the module sees.
//!
//! Errors name the full key (`idempotency.store.max_bytes`), the bad value
//! and what is allowed, in the shape of [`crate::config::ConfigError`]'s
//! `Invalid` variant, so the proxy's config loader can map one onto the
//! other field by field.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

/// Methods a key may be enforced on. Safe methods (GET, HEAD, OPTIONS)
/// are refused: there is nothing to de-duplicate.
pub const ALLOWED_METHODS: [&str; 4] = ["POST", "PATCH", "PUT", "DELETE"];
/// Record lifetime bounds (`ttl_seconds`): 1 s to 30 days.
pub const TTL_RANGE: (u64, u64) = (1, 30 * 24 * 3600);
/// In-flight claim lifetime bounds (`in_flight_ttl_seconds`).
pub const IN_FLIGHT_TTL_RANGE: (u64, u64) = (1, 3600);
/// Largest storable response body (`max_stored_response_bytes`): 16 MiB.
pub const MAX_STORED_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Redis command timeout bounds (`store.timeout_ms`).
pub const REDIS_TIMEOUT_RANGE: (u64, u64) = (10, 10_000);
/// Longest Redis key prefix.
pub const MAX_KEY_PREFIX_LEN: usize = 128;

// ---------------------------------------------------------------- file layer

/// `[idempotency]` as written in the proxy's TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdempotency {
    /// On by default: the SDKs send a key with every POST and PATCH and
    /// resend after a lost answer, which is safe only where the key is
    /// honoured. A request without a key is forwarded as before (unless
    /// its path is under `required_prefixes`), so keyless clients are
    /// unaffected. `enabled = false` for an app that dedupes on the key
    /// itself.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Path prefixes where a covered request without a key is `400`.
    #[serde(default)]
    pub required_prefixes: Vec<String>,
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    #[serde(default = "default_in_flight_ttl")]
    pub in_flight_ttl_seconds: u64,
    #[serde(default = "default_max_stored")]
    pub max_stored_response_bytes: usize,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default = "default_on_store_error")]
    pub on_store_error: String,
}

/// `[idempotency.store]`. One flat table whose `kind` selects which other
/// keys apply, so a key given for the wrong kind is an error that names
/// it (a serde enum would only say "unknown field").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    #[serde(default = "default_kind")]
    pub kind: String,
    // kind = "memory"
    pub max_entries: Option<usize>,
    pub max_bytes: Option<usize>,
    // kind = "redis"
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout_ms: Option<u64>,
}

impl Default for FileStore {
    fn default() -> Self {
        FileStore {
            kind: default_kind(),
            max_entries: None,
            max_bytes: None,
            url: None,
            key_prefix: None,
            timeout_ms: None,
        }
    }
}

fn default_enabled() -> bool {
    true
}

impl Default for FileIdempotency {
    fn default() -> Self {
        FileIdempotency {
            enabled: default_enabled(),
            methods: default_methods(),
            required_prefixes: Vec::new(),
            ttl_seconds: default_ttl(),
            in_flight_ttl_seconds: default_in_flight_ttl(),
            max_stored_response_bytes: default_max_stored(),
            store: FileStore::default(),
            on_store_error: default_on_store_error(),
        }
    }
}

fn default_methods() -> Vec<String> {
    vec!["POST".into(), "PATCH".into()]
}
/// 24 h: the retry window Stripe documents for its keys.
fn default_ttl() -> u64 {
    86_400
}
/// Longer than the default upstream read timeout (30 s), so a slow but
/// live request keeps its claim.
fn default_in_flight_ttl() -> u64 {
    60
}
fn default_max_stored() -> usize {
    64 * 1024
}
fn default_kind() -> String {
    "memory".into()
}
fn default_on_store_error() -> String {
    "reject".into()
}
/// Memory store defaults.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Redis store defaults.
pub const DEFAULT_KEY_PREFIX: &str = "tether:idem:";
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 200;

// --------------------------------------------------------------- typed layer

/// The validated `[idempotency]` table.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub enabled: bool,
    /// Methods the key is enforced on (default POST, PATCH).
    pub methods: Vec<http::Method>,
    /// Path prefixes (each starting with `/`) where a covered request
    /// without a key is refused with `400`.
    pub required_prefixes: Vec<String>,
    /// How long a stored answer is replayed (default 24 h).
    pub ttl: Duration,
    /// How long a claim lives without its request finishing (default
    /// 60 s): the bound on a dead proxy's claim.
    pub in_flight_ttl: Duration,
    /// Largest response body stored for replay, bytes (default 64 KiB);
    /// a larger answer is forwarded but not stored.
    pub max_stored_response_bytes: usize,
    pub store: StoreConfig,
    pub on_store_error: OnStoreError,
}

impl Default for IdempotencyConfig {
    /// The defaults of an absent `[idempotency]` table (on, memory store).
    fn default() -> Self {
        // The default file table is valid by construction (tested).
        validate(&FileIdempotency::default()).unwrap_or_else(|_| IdempotencyConfig {
            enabled: false,
            methods: vec![http::Method::POST, http::Method::PATCH],
            required_prefixes: Vec::new(),
            ttl: Duration::from_secs(default_ttl()),
            in_flight_ttl: Duration::from_secs(default_in_flight_ttl()),
            max_stored_response_bytes: default_max_stored(),
            store: StoreConfig::Memory {
                max_entries: NonZeroUsize::MIN,
                max_bytes: NonZeroUsize::MIN,
            },
            on_store_error: OnStoreError::Reject,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process only, bounded; the oldest stored answers go first.
    Memory {
        max_entries: NonZeroUsize,
        max_bytes: NonZeroUsize,
    },
    /// Shared by the proxies of one region.
    Redis {
        url: RedisUrl,
        key_prefix: String,
        /// Per command, connecting included.
        timeout: Duration,
    },
}

/// A `redis://` URL. Its `Debug` and `Display` hide the password, so the
/// config can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                // Setting a password on a URL that has one cannot fail.
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.0.clone(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What a covered request with a key gets when the store cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// `503` problem+json with `Retry-After` (default): a key promises
    /// at-most-once, and the store is down exactly when retries are
    /// likely, so the proxy does not silently drop the promise.
    Reject,
    /// Forward without de-duplication: for apps that also dedupe.
    Forward,
}

/// A bad value in `[idempotency]`: the key, the value, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {allowed}")]
pub struct IdempotencyConfigError {
    pub key: &'static str,
    pub value: String,
    pub allowed: String,
}

fn bad(
    key: &'static str,
    value: impl fmt::Display,
    allowed: impl Into<String>,
) -> IdempotencyConfigError {
    IdempotencyConfigError {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// `value` of `key` may be at most `most`, because `what` is allocated at
/// start with that size.
fn at_most(
    key: &'static str,
    value: usize,
    most: usize,
    what: &str,
) -> Result<(), IdempotencyConfigError> {
    if value > most {
        return Err(bad(
            key,
            value,
            format!("must be at most {most} ({what} is allocated at start)"),
        ));
    }
    Ok(())
}

fn range(
    key: &'static str,
    v: u64,
    (min, max): (u64, u64),
    unit: &str,
) -> Result<u64, IdempotencyConfigError> {
    if v < min || v > max {
        return Err(bad(
            key,
            v,
            format!("must be between {min} and {max} ({unit})"),
        ));
    }
    Ok(v)
}

/// Checks the file table and produces the typed config. Every key is
/// checked, also when `enabled = false`, so a table is valid before it is
/// switched on.
pub fn validate(f: &FileIdempotency) -> Result<IdempotencyConfig, IdempotencyConfigError> {
    if f.methods.is_empty() {
        return Err(bad(
            "idempotency.methods",
            "[]",
            format!("list at least one of {ALLOWED_METHODS:?}"),
        ));
    }
    let mut methods = Vec::with_capacity(f.methods.len());
    for m in &f.methods {
        if !ALLOWED_METHODS.contains(&m.as_str()) {
            return Err(bad(
                "idempotency.methods",
                format!("{m:?}"),
                format!("each must be one of {ALLOWED_METHODS:?} (upper case)"),
            ));
        }
        // Listed above, so a valid method token.
        let m = http::Method::from_bytes(m.as_bytes())
            .map_err(|_| bad("idempotency.methods", format!("{m:?}"), "not a method"))?;
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    for p in &f.required_prefixes {
        if !p.starts_with('/') || p.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad(
                "idempotency.required_prefixes",
                format!("{p:?}"),
                "each must be a path prefix starting with '/', e.g. \"/orders\"",
            ));
        }
    }
    let ttl = range(
        "idempotency.ttl_seconds",
        f.ttl_seconds,
        TTL_RANGE,
        "seconds",
    )?;
    let in_flight = range(
        "idempotency.in_flight_ttl_seconds",
        f.in_flight_ttl_seconds,
        IN_FLIGHT_TTL_RANGE,
        "seconds",
    )?;
    if in_flight > ttl {
        return Err(bad(
            "idempotency.in_flight_ttl_seconds",
            in_flight,
            format!("must not exceed idempotency.ttl_seconds ({ttl})"),
        ));
    }
    if f.max_stored_response_bytes == 0 || f.max_stored_response_bytes > MAX_STORED_RESPONSE_BYTES {
        return Err(bad(
            "idempotency.max_stored_response_bytes",
            f.max_stored_response_bytes,
            format!("must be between 1 and {MAX_STORED_RESPONSE_BYTES} (bytes)"),
        ));
    }
    let store = validate_store(&f.store, f.max_stored_response_bytes)?;
    let on_store_error = match f.on_store_error.as_str() {
        "reject" => OnStoreError::Reject,
        "forward" => OnStoreError::Forward,
        other => {
            return Err(bad(
                "idempotency.on_store_error",
                format!("{other:?}"),
                "must be \"reject\" (503) or \"forward\" (no de-duplication)",
            ))
        }
    };
    Ok(IdempotencyConfig {
        enabled: f.enabled,
        methods,
        required_prefixes: f.required_prefixes.clone(),
        ttl: Duration::from_secs(ttl),
        in_flight_ttl: Duration::from_secs(in_flight),
        max_stored_response_bytes: f.max_stored_response_bytes,
        store,
        on_store_error,
    })
}

fn validate_store(s: &FileStore, max_stored: usize) -> Result<StoreConfig, IdempotencyConfigError> {
    fn only(key: &'static str, present: bool, kind: &str) -> Result<(), IdempotencyConfigError> {
        if present {
            return Err(bad(
                key,
                "(set)",
                format!("does not apply to kind = \"{kind}\""),
            ));
        }
        Ok(())
    }
    match s.kind.as_str() {
        "memory" => {
            only("idempotency.store.url", s.url.is_some(), "memory")?;
            only(
                "idempotency.store.key_prefix",
                s.key_prefix.is_some(),
                "memory",
            )?;
            only(
                "idempotency.store.timeout_ms",
                s.timeout_ms.is_some(),
                "memory",
            )?;
            let entries = s.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
            let max_entries = NonZeroUsize::new(entries).ok_or_else(|| {
                bad(
                    "idempotency.store.max_entries",
                    entries,
                    "must be at least 1",
                )
            })?;
            // The index and the answer log are allocated at start.
            at_most(
                "idempotency.store.max_entries",
                entries,
                super::store::memory::MAX_ENTRIES,
                "the index",
            )?;
            let bytes = s.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
            at_most(
                "idempotency.store.max_bytes",
                bytes,
                super::store::memory::MAX_LOG_BYTES,
                "the answer log",
            )?;
            // Room for at least one answer of the largest storable size.
            let overhead = super::record::MAX_OVERHEAD;
            let floor = max_stored + overhead;
            if bytes < floor {
                return Err(bad(
                    "idempotency.store.max_bytes",
                    bytes,
                    format!(
                        "must be at least idempotency.max_stored_response_bytes + {overhead} ({floor})"
                    ),
                ));
            }
            let max_bytes = NonZeroUsize::new(bytes)
                .ok_or_else(|| bad("idempotency.store.max_bytes", bytes, "must be at least 1"))?;
            Ok(StoreConfig::Memory {
                max_entries,
                max_bytes,
            })
        }
        "redis" => {
            only(
                "idempotency.store.max_entries",
                s.max_entries.is_some(),
                "redis",
            )?;
            only(
                "idempotency.store.max_bytes",
                s.max_bytes.is_some(),
                "redis",
            )?;
            let url = s.url.as_deref().ok_or_else(|| {
                bad(
                    "idempotency.store.url",
                    "(missing)",
                    "kind = \"redis\" needs a url, e.g. \"redis://127.0.0.1:6379/0\"",
                )
            })?;
            let shown = RedisUrl(url.to_owned()).to_string();
            let parsed = url::Url::parse(url).map_err(|e| {
                bad(
                    "idempotency.store.url",
                    format!("{shown:?}"),
                    format!("not a URL: {e}"),
                )
            })?;
            if parsed.scheme() != "redis" || parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad(
                    "idempotency.store.url",
                    format!("{shown:?}"),
                    "must be redis://HOST[:PORT][/DB] (TLS and sockets are not supported)",
                ));
            }
            if redis::Client::open(url).is_err() {
                return Err(bad(
                    "idempotency.store.url",
                    format!("{shown:?}"),
                    "the Redis client does not accept this URL",
                ));
            }
            let key_prefix = s
                .key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
            if key_prefix.len() > MAX_KEY_PREFIX_LEN
                || !key_prefix.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(bad(
                    "idempotency.store.key_prefix",
                    format!("{key_prefix:?}"),
                    format!(
                        "at most {MAX_KEY_PREFIX_LEN} printable ASCII characters without spaces"
                    ),
                ));
            }
            let ms = range(
                "idempotency.store.timeout_ms",
                s.timeout_ms.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS),
                REDIS_TIMEOUT_RANGE,
                "milliseconds",
            )?;
            Ok(StoreConfig::Redis {
                url: RedisUrl(url.to_owned()),
                key_prefix,
                timeout: Duration::from_millis(ms),
            })
        }
        other => Err(bad(
            "idempotency.store.kind",
            format!("{other:?}"),
            "must be \"memory\" or \"redis\"",
        )),
    }
}

/// Parses and validates a `[idempotency]` table given as TOML text (the
/// table's body, without the header). For tests and `tether check`.
pub fn parse_table(text: &str) -> Result<IdempotencyConfig, String> {
    let f: FileIdempotency = toml::from_str(text).map_err(|e| e.to_string())?;
    validate(&f).map_err(|e| e.to_string())
}
