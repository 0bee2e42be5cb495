//! The live key ring: [`Tokens`] behind an `ArcSwap`, reloaded without a
//! restart when the key-ring file changes (checked every second) or on
//! SIGHUP.
//!
//! Rotation: add the new key to the file and make it `signing_kid`; keep
//! the old key listed until the tokens it signed have expired (the refresh
//! lifetime). Tokens signed by any listed key verify, so no valid token is
//! refused during a rotation. A file that fails to parse is logged and
//! ignored: the proxy keeps the last good ring.

use std::path::PathBuf;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use tether_protocol::claims::{AccessClaims, RefreshClaims};

use super::{
    AccessView, KeyRing, KeyRingError, LockTarget, Minted, TokenConfig, TokenError, Tokens,
};

pub struct TokenStore {
    current: ArcSwap<Tokens>,
    cfg: TokenConfig,
    path: PathBuf,
    /// The file's text as last loaded, to see whether it changed.
    loaded: Mutex<String>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
}

impl TokenStore {
    pub fn new(cfg: &TokenConfig) -> TokenStore {
        let text = std::fs::read_to_string(&cfg.keyring_path).unwrap_or_default();
        TokenStore {
            current: ArcSwap::from_pointee(Tokens::new(cfg)),
            cfg: cfg.clone(),
            path: cfg.keyring_path.clone(),
            loaded: Mutex::new(text),
        }
    }

    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.current.load().verify_access(token)
    }

    /// See [`Tokens::with_access`]: the allocation-free check for the
    /// request path.
    pub fn with_access<R>(
        &self,
        token: &str,
        f: impl FnOnce(AccessView<'_>) -> R,
    ) -> Result<R, TokenError> {
        self.current.load().with_access(token, f)
    }

    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        self.current.load().verify_refresh(token)
    }

    pub fn mint(
        &self,
        subject: &str,
        target: LockTarget<'_>,
        home: Option<&str>,
        family: Option<&str>,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        self.current.load().mint(subject, target, home, family)
    }

    pub fn mint_with(
        &self,
        subject: &str,
        target: LockTarget<'_>,
        home: Option<&str>,
        family: Option<&str>,
        refresh_id: Option<(&str, u64)>,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        self.current
            .load()
            .mint_with(subject, target, home, family, refresh_id)
    }

    /// `/.well-known/jwks.json`: the current ring's Ed25519 public keys.
    pub fn jwks_json(&self) -> String {
        self.current.load().jwks_json()
    }

    pub fn cached_tokens(&self) -> usize {
        self.current.load().cached_tokens()
    }

    /// Re-reads the key-ring file; swaps in a new ring when its text
    /// changed and parses. On error the current ring stays.
    pub fn reload(&self) -> Result<Reload, KeyRingError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| KeyRingError::Read {
            path: self.path.display().to_string(),
            source,
        })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == text {
            return Ok(Reload::Unchanged);
        }
        let ring = KeyRing::parse(&text, &self.path.display().to_string())?;
        let cfg = TokenConfig {
            keyring: ring,
            ..self.cfg.clone()
        };
        self.current.store(std::sync::Arc::new(Tokens::new(&cfg)));
        *loaded = text;
        Ok(Reload::Reloaded)
    }
}
