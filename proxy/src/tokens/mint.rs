//! Minting: an access and a refresh token locked to a server.

use jsonwebtoken::Header;
use tether_protocol::claims::{AccessClaims, RefreshClaims};
use tether_protocol::typ;

use super::ids::{random_id, unix_now};
use super::Tokens;

/// A freshly minted pair.
#[derive(Debug, Clone)]
pub struct Minted {
    pub access: String,
    pub refresh: String,
    /// Access lifetime, seconds.
    pub expires_in: u64,
    pub family: String,
}

/// What the lock is set to when minting.
#[derive(Debug, Clone, Copy)]
pub struct LockTarget<'a> {
    pub server_id: &'a str,
    pub region: &'a str,
}

impl Tokens {
    /// Mints an access and a refresh token locked to `target`. A new login
    /// starts a new refresh family; a refresh keeps its family.
    pub fn mint(
        &self,
        subject: &str,
        target: LockTarget<'_>,
        home: Option<&str>,
        family: Option<&str>,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        self.mint_with(subject, target, home, family, None)
    }

    /// Like [`Tokens::mint`], with the refresh token's `jti` and `iat`
    /// given: a rotated refresh token is derived, not random, so a retry
    /// within the grace window re-creates the very same token.
    pub fn mint_with(
        &self,
        subject: &str,
        target: LockTarget<'_>,
        home: Option<&str>,
        family: Option<&str>,
        refresh_id: Option<(&str, u64)>,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let family = family.map_or_else(random_id, str::to_owned);
        let (refresh_jti, refresh_iat) = match refresh_id {
            Some((jti, iat)) => (jti.to_owned(), iat),
            None => (random_id(), now),
        };
        let access = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl.as_secs(),
            jti: random_id(),
            srv: target.server_id.to_owned(),
            rgn: target.region.to_owned(),
            home: home.map(str::to_owned),
            fam: family.clone(),
        };
        let refresh = RefreshClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            iat: refresh_iat,
            exp: refresh_iat + self.refresh_ttl.as_secs(),
            jti: refresh_jti,
            fam: family.clone(),
            srv: target.server_id.to_owned(),
            home: home.map(str::to_owned),
        };
        Ok(Minted {
            access: self.sign(typ::ACCESS, &access)?,
            refresh: self.sign(typ::REFRESH, &refresh)?,
            expires_in: self.access_ttl.as_secs(),
            family,
        })
    }

    fn sign<T: serde::Serialize>(
        &self,
        typ: &str,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.ring.signing_alg);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.ring.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.ring.signing)
    }
}
