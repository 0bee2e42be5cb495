//! Verifying: the general `jsonwebtoken` path, the borrowed check the
//! request path uses, and `tether token inspect`.
//!
//! Every check that can be made before touching the signature is made
//! first and cheaply: length, segment count, header `typ`, `kid`,
//! algorithm allow-list.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, Validation};
use tether_protocol::claims::{AccessClaims, RefreshClaims};
use tether_protocol::typ;
use tether_protocol::validate::MAX_TOKEN_LEN;

use super::error::map_jwt_error;
use super::fast::AccessClaimsRef;
use super::ids::unix_now;
use super::{TokenError, Tokens};

impl Tokens {
    /// Verifies an access token: signature, `typ: at+jwt`, `iss`, `aud`,
    /// `exp`, `nbf` (with the configured leeway).
    /// A `srv` that is not a well-formed server id (a URL, say) is refused
    /// here, so no token can ever name an address.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = unix_now();
        let claims = match self.fast_access_with(token, now, &mut |c| c.owned()) {
            Some(c) => c,
            None => match &self.verified {
                Some(cache) => self.verify_cached(cache, token, now)?.claims.clone(),
                None => self.verify(token, typ::ACCESS, &self.access_validation)?,
            },
        };
        lock_target(&claims.srv)?;
        Ok(claims)
    }

    /// The same checks as [`Tokens::verify_access`], handing `f` the claims
    /// the request path needs, borrowed. With the verified-token cache on
    /// (the default), a token's first check fills the cache and later ones
    /// are hits that allocate nothing; with it off, a valid HS256 token is
    /// checked and read without a heap allocation (the fast path decodes
    /// into stack buffers), and other tokens take the general path and are
    /// borrowed from its result.
    pub fn with_access<R>(
        &self,
        token: &str,
        f: impl FnOnce(AccessView<'_>) -> R,
    ) -> Result<R, TokenError> {
        let now = unix_now();
        // With the cache on, every access token goes through it: a hit
        // (a hash of the token and a lookup) is cheaper than even the
        // HS256 fast path, and borrows the shared claims, so it allocates
        // nothing either.
        if let Some(cache) = &self.verified {
            let v = self.verify_cached(cache, token, now)?;
            lock_target(&v.claims.srv)?;
            return Ok(f(AccessView {
                sub: &v.claims.sub,
                srv: &v.claims.srv,
                fam: &v.claims.fam,
                subject: v.subject.as_ref(),
            }));
        }
        let mut f = Some(f);
        let mut run = |c: &AccessClaimsRef<'_>| -> Result<R, TokenError> {
            lock_target(c.srv)?;
            // `run` is called at most once: by the fast path when it
            // accepts, else once after the general path.
            match f.take() {
                Some(f) => Ok(f(AccessView {
                    sub: c.sub,
                    srv: c.srv,
                    fam: c.fam,
                    subject: None,
                })),
                None => Err(TokenError::BadClaims),
            }
        };
        if let Some(r) = self.fast_access_with(token, now, &mut run) {
            return r;
        }
        let claims: AccessClaims = self.verify(token, typ::ACCESS, &self.access_validation)?;
        run(&AccessClaimsRef::of(&claims))
    }

    /// Verifies a refresh token (`typ: rt+jwt`).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        let claims: RefreshClaims = self.verify(token, typ::REFRESH, &self.refresh_validation)?;
        lock_target(&claims.srv)?;
        Ok(claims)
    }

    pub(super) fn verify<T: serde::de::DeserializeOwned + Lifetime>(
        &self,
        token: &str,
        want_typ: &str,
        validations: &HashMap<Algorithm, Validation>,
    ) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit`
        // names an extension it does not understand; tether understands
        // none, so any `crit` (even an empty list, which §4.1.11 forbids)
        // is refused.
        if header.crit.is_some() || header_has_crit(token) {
            return Err(TokenError::CriticalHeader);
        }
        if header.typ.as_deref() != Some(want_typ) {
            return Err(TokenError::WrongType);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.ring.verifying.get(kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != key.alg {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let validation = validations
            .get(&key.alg)
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let claims = jsonwebtoken::decode::<T>(token, &key.key, validation)
            .map(|d| d.claims)
            .map_err(map_jwt_error)?;
        // Access tokens: the configured lifetime. Refresh tokens: the
        // longest lifetime any config allows, so shortening
        // `refresh_ttl_days` does not sign out everyone at once.
        let max = match want_typ {
            typ::ACCESS => self.access_ttl.as_secs(),
            _ => REFRESH_LIFETIME_CAP,
        };
        if claims.lifetime() > max + self.leeway {
            return Err(TokenError::LifetimeTooLong);
        }
        Ok(claims)
    }
}

/// Whether the token's header has a `crit` member in any form (`null`
/// included, which `jsonwebtoken` reads as absent).
fn header_has_crit(token: &str) -> bool {
    use base64::Engine;
    let Some(segment) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&h).ok())
        .is_some_and(|h| h.contains_key("crit"))
}

/// The longest refresh-token lifetime accepted, seconds: the top of
/// `config::REFRESH_TTL_RANGE` (30 days; a config test checks they agree).
pub const REFRESH_LIFETIME_CAP: u64 = 30 * 86_400;

/// `exp − iat` of a token's claims, in seconds (0 when `exp` is earlier).
pub(super) trait Lifetime {
    fn lifetime(&self) -> u64;
}

impl Lifetime for AccessClaims {
    fn lifetime(&self) -> u64 {
        self.exp.saturating_sub(self.iat)
    }
}

impl Lifetime for RefreshClaims {
    fn lifetime(&self) -> u64 {
        self.exp.saturating_sub(self.iat)
    }
}

/// What the request path reads from a verified access token.
#[derive(Debug, Clone, Copy)]
pub struct AccessView<'a> {
    pub sub: &'a str,
    pub srv: &'a str,
    pub fam: &'a str,
    /// `sub` as a header value, when the verified-token cache made it
    /// (a clone is a reference-count increment, not a copy).
    pub subject: Option<&'a http::HeaderValue>,
}

/// A token's `srv` must be a well-formed server id (never a URL or an
/// address): otherwise the claims are bad, whatever the signature says.
fn lock_target(srv: &str) -> Result<(), TokenError> {
    tether_protocol::validate::server_id("srv", srv).map_err(|_| TokenError::BadClaims)
}

/// Decodes a token's header and claims without verifying anything, for
/// `tether token inspect`.
pub fn inspect(token: &str) -> Result<serde_json::Value, TokenError> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |s: &str| -> Result<serde_json::Value, TokenError> {
        let bytes = b64.decode(s).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
    };
    Ok(serde_json::json!({ "header": decode(h)?, "claims": decode(c)? }))
}
