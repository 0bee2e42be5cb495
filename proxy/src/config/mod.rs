//! Proxy configuration, in three layers:
//!
//! - `file`: the TOML file as serde reads it (`deny_unknown_fields`),
//!   with its defaults;
//! - `validate`: every key checked, one function per `[section]`;
//! - `typed`: the validated [`ProxyConfig`] the rest of the crate sees
//!   (`lifecycle`: its shutdown and upgrade part).
//!
//! Every error names the file, the key, the bad value and what is allowed.
//! Relative paths (key ring, token files) resolve against the directory of
//! the config file, so `conf/` works from any working directory.

mod file;
mod lifecycle;
mod typed;
mod validate;

use std::path::Path;

use crate::tokens::KeyRingError;

pub use crate::tokens::{DownPolicy, TokenConfig};
pub use lifecycle::{
    LifecycleConfig, DEFAULT_SHUTDOWN_GRACE_SECONDS, DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
    DEFAULT_UPGRADE_SOCKET,
};
pub use typed::{
    DiscoveryClientConfig, ForeignLock, Limits, LoginConfig, ProxyConfig, RoutingConfig,
    ServerIdentity, Source, TlsFiles, UpstreamConfig,
};

/// Access-token lifetime bounds (docs/design.md §3), seconds.
pub const ACCESS_TTL_RANGE: (u64, u64) = (60, 300);
/// Refresh-token lifetime bounds, days.
pub const REFRESH_TTL_RANGE: (u64, u64) = (7, 30);
/// `tokens.max_extend_seconds` bounds, seconds: at most seven days (the
/// shortest refresh lifetime: past that, "extend" would outlive every
/// refresh token anyway). Smaller is only stricter, so the floor is 1
/// (use `fail_closed` for none at all).
pub const MAX_EXTEND_RANGE: (u64, u64) = (1, 7 * 86_400);
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
    let file: file::FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: shown.clone(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::Validator { path: shown, base }.validate(file)
}

#[cfg(test)]
mod tests;
