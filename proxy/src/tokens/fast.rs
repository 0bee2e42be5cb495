//! The fast path and the verified-token cache: what keeps a valid
//! access-token check cheap and, on a hit, free of heap allocations.

use std::sync::Arc;

use base64::Engine;
use hmac::Mac;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use tether_protocol::claims::AccessClaims;
use tether_protocol::typ;
use tether_protocol::validate::MAX_TOKEN_LEN;

use super::cache::{Verified, VerifiedCache};
use super::{TokenError, Tokens};

impl Tokens {
    /// The cache in front of the full check. A hit re-checks the times.
    pub(super) fn verify_cached(
        &self,
        cache: &VerifiedCache,
        token: &str,
        now: u64,
    ) -> Result<Arc<Verified>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        if let Some(c) = cache.get(token) {
            if c.claims.exp < now.saturating_sub(self.leeway) {
                return Err(TokenError::Expired);
            }
            if c.claims.nbf > now + self.leeway {
                return Err(TokenError::NotYetValid);
            }
            return Ok(c);
        }
        // A miss: the full check (the HS256 fast path when it accepts,
        // else the general path, which gives the precise error).
        let claims = match self.fast_access_with(token, now, &mut |c| c.owned()) {
            Some(c) => c,
            None => self.verify(token, typ::ACCESS, &self.access_validation)?,
        };
        let claims = Arc::new(Verified::new(claims));
        cache.insert(token, claims.clone());
        Ok(claims)
    }

    /// The fast path for a well-formed, valid HS256 access token: one
    /// base64 pass per segment into stack buffers, header and claims parsed
    /// in place, the HMAC from the precomputed key state, and the checks of
    /// docs/design.md §3 made here (typ, kid, algorithm allow-list, signature,
    /// iss, aud, exp and nbf with the leeway). It only ever *accepts*:
    /// anything unusual (another algorithm, escaped strings, header fields
    /// other than alg/typ/kid, a large token) and every failure give
    /// `None`, and `verify_access` then runs the general `jsonwebtoken`
    /// path, which gives the precise error. So a token passes here only if
    /// it passes there, with the same claims (the tests check that).
    pub(super) fn fast_access_with<R>(
        &self,
        token: &str,
        now: u64,
        accept: &mut dyn FnMut(&AccessClaimsRef<'_>) -> R,
    ) -> Option<R> {
        const B64: base64::engine::GeneralPurpose =
            base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (message, sig) = token.rsplit_once('.')?;
        let (header, payload) = message.split_once('.')?;
        if payload.contains('.') {
            return None;
        }

        let mut hbuf = [0u8; 256];
        let n = B64.decode_slice(header, &mut hbuf).ok()?;
        let h: FastHeader<'_> = serde_json::from_slice(&hbuf[..n]).ok()?;
        if h.alg != "HS256" || h.typ != Some(typ::ACCESS) {
            return None;
        }
        let key = self.ring.verifying.get(h.kid?)?;
        if key.alg != Algorithm::HS256 {
            return None;
        }
        let mut sbuf = [0u8; 64];
        let n = B64.decode_slice(sig, &mut sbuf).ok()?;
        let mut mac = key.mac.clone()?;
        mac.update(message.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sbuf[..n]).ok()?;

        let mut pbuf = [0u8; 1536];
        let n = B64.decode_slice(payload, &mut pbuf).ok()?;
        let c: AccessClaimsRef<'_> = serde_json::from_slice(&pbuf[..n]).ok()?;
        let leeway = self.access_validation.get(&Algorithm::HS256)?.leeway;
        // The same comparisons as jsonwebtoken's `validate`.
        if c.exp < now.checked_sub(leeway)? || c.nbf > now + leeway {
            return None;
        }
        // A lifetime over the configured one: the general path refuses it.
        if c.exp.saturating_sub(c.iat) > self.access_ttl.as_secs() + self.leeway {
            return None;
        }
        if c.iss != self.issuer || c.aud != self.audience {
            return None;
        }
        Some(accept(&c))
    }
}

/// A JWT header as the fast path accepts it: exactly these fields, as
/// plain (unescaped) strings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastHeader<'a> {
    alg: &'a str,
    #[serde(default)]
    typ: Option<&'a str>,
    #[serde(default)]
    kid: Option<&'a str>,
}

/// [`AccessClaims`] borrowed from the decoded payload: the same fields and
/// types, so whatever parses here parses there.
#[derive(Deserialize)]
pub(super) struct AccessClaimsRef<'a> {
    pub(super) iss: &'a str,
    pub(super) aud: &'a str,
    pub(super) sub: &'a str,
    pub(super) iat: u64,
    pub(super) nbf: u64,
    pub(super) exp: u64,
    pub(super) jti: &'a str,
    pub(super) srv: &'a str,
    pub(super) rgn: &'a str,
    #[serde(default)]
    pub(super) home: Option<&'a str>,
    pub(super) fam: &'a str,
}

impl<'a> AccessClaimsRef<'a> {
    pub(super) fn of(c: &'a AccessClaims) -> AccessClaimsRef<'a> {
        AccessClaimsRef {
            iss: &c.iss,
            aud: &c.aud,
            sub: &c.sub,
            iat: c.iat,
            nbf: c.nbf,
            exp: c.exp,
            jti: &c.jti,
            srv: &c.srv,
            rgn: &c.rgn,
            home: c.home.as_deref(),
            fam: &c.fam,
        }
    }
}

impl AccessClaimsRef<'_> {
    pub(super) fn owned(&self) -> AccessClaims {
        AccessClaims {
            iss: self.iss.to_owned(),
            aud: self.aud.to_owned(),
            sub: self.sub.to_owned(),
            iat: self.iat,
            nbf: self.nbf,
            exp: self.exp,
            jti: self.jti.to_owned(),
            srv: self.srv.to_owned(),
            rgn: self.rgn.to_owned(),
            home: self.home.map(str::to_owned),
            fam: self.fam.to_owned(),
        }
    }
}
