//! Tokens (docs/design.md §3): minting and verifying JWTs with `jsonwebtoken`,
//! and the key ring they are signed with.
//!
//! - `keyring`: the key-ring file (`keyring.toml`) and the keys in it;
//! - `mint`: an access and a refresh token locked to a server;
//! - `verify`: the general check, the borrowed one the request path
//!   uses, and `tether token inspect`;
//! - `fast`: the HS256 fast path and the cached check;
//! - `cache`: the verified-token cache (keyed by the token itself);
//! - `error`: why a token was refused;
//! - `store`: the live key ring, reloaded without a restart;
//! - `ids`: token ids, hex and the clock.
//!
//! [`Tokens`] is one key ring with its settings ([`TokenConfig`], which the
//! config layer fills in); [`TokenStore`] holds the current one.

mod cache;
mod error;
mod fast;
mod ids;
mod keyring;
mod mint;
mod store;
mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};

pub use error::TokenError;
pub(crate) use ids::decode_hex;
pub use ids::{hex, random_id, sha256_hex, successor_jti, unix_now};
pub use keyring::{KeyRing, KeyRingError, MIN_HS256_SECRET};
pub use mint::{LockTarget, Minted};
pub use store::{Reload, TokenStore};
pub use verify::{inspect, AccessView, REFRESH_LIFETIME_CAP};

use cache::VerifiedCache;

/// The `[tokens]` settings, as the config layer ([`crate::config`])
/// validated them.
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
    /// How long `DownPolicy::Extend` lasts through one continuous
    /// discovery outage before it behaves as `FailClosed`.
    pub max_extend: Duration,
    /// Size of the verified-token cache for access tokens (0: off).
    pub verified_cache_entries: usize,
}

/// Refresh-token rotation when discovery is unreachable. Access tokens
/// already issued are never affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPolicy {
    /// Re-mint the access token for the current lock and hand the
    /// presented refresh token back unrotated, for at most `max_extend` of
    /// continuous outage (default; docs/design.md §6b). Reuse detection is
    /// postponed to the first refresh after discovery returns.
    Extend,
    /// Refuse refreshes (503) until discovery answers: reuse detection is
    /// never postponed.
    FailClosed,
    /// Rotate without reuse detection while discovery is away.
    FailOpen,
}

/// One key ring with its settings: mints (`mint.rs`) and verifies
/// (`verify.rs`, `fast.rs`).
pub struct Tokens {
    ring: KeyRing,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    access_validation: HashMap<Algorithm, Validation>,
    refresh_validation: HashMap<Algorithm, Validation>,
    /// Access tokens whose signature was checked, by the token itself
    /// (`cache.rs`: a keyed fast hash and a full comparison; an Ed25519 check costs more than the whole proxy hop, and even an
    /// HS256 check costs more than a hit).
    /// Bounded; a new `Tokens` (key reload) starts empty, so a key change
    /// flushes it. `exp`/`nbf` are re-checked on every hit.
    verified: Option<VerifiedCache>,
    leeway: u64,
}

impl Tokens {
    pub fn new(cfg: &TokenConfig) -> Tokens {
        let make = |alg: Algorithm, access: bool| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway.as_secs();
            v.set_issuer(&[cfg.issuer.as_str()]);
            v.set_audience(&[cfg.audience.as_str()]);
            v.validate_exp = true;
            v.validate_nbf = access;
            if access {
                v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
            } else {
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            }
            v
        };
        let algs = [Algorithm::HS256, Algorithm::EdDSA];
        Tokens {
            verified: (cfg.verified_cache_entries > 0)
                .then(|| VerifiedCache::new(cfg.verified_cache_entries)),
            leeway: cfg.leeway.as_secs(),
            ring: cfg.keyring.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            access_ttl: cfg.access_ttl,
            refresh_ttl: cfg.refresh_ttl,
            access_validation: algs.iter().map(|&a| (a, make(a, true))).collect(),
            refresh_validation: algs.iter().map(|&a| (a, make(a, false))).collect(),
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Entries in the verified-token cache (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.verified.as_ref().map_or(0, |c| c.len())
    }

    pub fn jwks_json(&self) -> String {
        self.ring.jwks_json()
    }
}

#[cfg(test)]
mod tests;
