//! Minting and verifying tokens (DESIGN.md §3) with `jsonwebtoken`.
//!
//! The key ring maps `kid` to a key and its one allowed algorithm; one key
//! signs, all verify (rotation: add the new key, switch `signing_kid`,
//! remove the old key once its tokens have expired). Every check that can
//! be made before touching the signature is made first and cheaply:
//! length, segment count, header `typ`, `kid`, algorithm allow-list.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use sha2::Sha256;
use tether_protocol::claims::{AccessClaims, RefreshClaims};
use tether_protocol::typ;
use tether_protocol::wire::MAX_TOKEN_LEN;

/// Shortest HS256 secret accepted, bytes (256 bits).
pub const MIN_HS256_SECRET: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: key {kid:?}: {message}")]
    Key {
        path: String,
        kid: String,
        message: String,
    },
    #[error("{path}: signing_kid {kid:?} names no key in the ring")]
    NoSigningKey { path: String, kid: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRingFile {
    signing_kid: String,
    keys: Vec<KeyFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kid: String,
    alg: String,
    /// HS256: the shared secret.
    secret_hex: Option<String>,
    /// EdDSA: the 32-byte Ed25519 seed (only the signing proxy needs it).
    private_key_hex: Option<String>,
    /// EdDSA: the 32-byte public key (derived from the seed when absent).
    public_key_hex: Option<String>,
}

/// PKCS#8 v1 DER prefix of an Ed25519 private key; the 32-byte seed
/// follows (RFC 8410 §7).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn decode_32(what: &str, hex: &str) -> Result<[u8; 32], String> {
    let bytes = decode_hex(hex).ok_or_else(|| format!("{what} is not valid hex"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{what} must be 32 bytes (64 hex characters), not {}",
            bytes.len()
        )
    })
}

#[derive(Clone)]
struct VerifyingKey {
    alg: Algorithm,
    key: DecodingKey,
    /// HS256: the HMAC with the key already absorbed, cloned per token so
    /// the fast path does not re-derive the inner and outer pads.
    mac: Option<Hmac<Sha256>>,
}

/// The signing key and every verifying key, by `kid`.
#[derive(Clone)]
pub struct KeyRing {
    signing_kid: String,
    signing_alg: Algorithm,
    signing: EncodingKey,
    verifying: HashMap<String, VerifyingKey>,
    /// Ed25519 public keys by kid, for `/.well-known/jwks.json`.
    public: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("KeyRing")
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    pub fn load(path: &Path) -> Result<KeyRing, KeyRingError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyRingError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, shown: &str) -> Result<KeyRing, KeyRingError> {
        let file: KeyRingFile = toml::from_str(text).map_err(|e| KeyRingError::Parse {
            path: shown.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut verifying = HashMap::new();
        let mut signing = None;
        let mut public_keys = Vec::new();
        for k in &file.keys {
            let bad = |message: String| KeyRingError::Key {
                path: shown.to_owned(),
                kid: k.kid.clone(),
                message,
            };
            if k.kid.is_empty()
                || k.kid.len() > 64
                || !k
                    .kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("kid must be 1-64 characters of A-Z a-z 0-9 - _".into()));
            }
            let (alg, decoding, mac, encoding) = match k.alg.as_str() {
                "HS256" => {
                    if k.private_key_hex.is_some() || k.public_key_hex.is_some() {
                        return Err(bad("an HS256 key has secret_hex only".into()));
                    }
                    let secret = decode_hex(k.secret_hex.as_deref().unwrap_or(""))
                        .ok_or_else(|| bad("secret_hex is not valid hex".into()))?;
                    if secret.len() < MIN_HS256_SECRET {
                        return Err(bad(format!(
                            "secret is {} bytes; HS256 needs at least {MIN_HS256_SECRET} random bytes (64 hex characters)",
                            secret.len()
                        )));
                    }
                    (
                        Algorithm::HS256,
                        DecodingKey::from_secret(&secret),
                        Hmac::<Sha256>::new_from_slice(&secret).ok(),
                        Some(EncodingKey::from_secret(&secret)),
                    )
                }
                "EdDSA" => {
                    if k.secret_hex.is_some() {
                        return Err(bad("an EdDSA key has private_key_hex and/or public_key_hex, not secret_hex".into()));
                    }
                    let seed = k
                        .private_key_hex
                        .as_deref()
                        .map(|h| decode_32("private_key_hex", h))
                        .transpose()
                        .map_err(bad)?;
                    let derived = seed.map(|s| {
                        ed25519_dalek::SigningKey::from_bytes(&s)
                            .verifying_key()
                            .to_bytes()
                    });
                    let public =
                        match (k.public_key_hex.as_deref(), derived) {
                            (Some(h), d) => {
                                let p = decode_32("public_key_hex", h).map_err(bad)?;
                                if d.is_some_and(|d| d != p) {
                                    return Err(bad(
                                        "public_key_hex does not match private_key_hex".into(),
                                    ));
                                }
                                p
                            }
                            (None, Some(d)) => d,
                            (None, None) => return Err(bad(
                                "an EdDSA key needs public_key_hex (and private_key_hex to sign)"
                                    .into(),
                            )),
                        };
                    if ed25519_dalek::VerifyingKey::from_bytes(&public).is_err() {
                        return Err(bad("public_key_hex is not a valid Ed25519 point".into()));
                    }
                    public_keys.push((k.kid.clone(), public));
                    let encoding = seed.map(|s| {
                        let mut der = ED25519_PKCS8_PREFIX.to_vec();
                        der.extend_from_slice(&s);
                        EncodingKey::from_ed_der(&der)
                    });
                    (
                        Algorithm::EdDSA,
                        DecodingKey::from_ed_der(&public),
                        None,
                        encoding,
                    )
                }
                other => {
                    return Err(bad(format!(
                        "alg {other:?} is not allowed; allowed: \"HS256\", \"EdDSA\""
                    )))
                }
            };
            if verifying
                .insert(
                    k.kid.clone(),
                    VerifyingKey {
                        alg,
                        key: decoding,
                        mac,
                    },
                )
                .is_some()
            {
                return Err(bad("kid is listed twice".into()));
            }
            if k.kid == file.signing_kid {
                let encoding =
                    encoding.ok_or_else(|| bad("the signing key needs its private key".into()))?;
                signing = Some((alg, encoding));
            }
        }
        let (signing_alg, signing) = signing.ok_or_else(|| KeyRingError::NoSigningKey {
            path: shown.to_owned(),
            kid: file.signing_kid.clone(),
        })?;
        Ok(KeyRing {
            signing_kid: file.signing_kid,
            signing_alg,
            signing,
            verifying,
            public: public_keys,
        })
    }

    /// The JWKS document for `/.well-known/jwks.json`: the Ed25519 public
    /// keys (HS256 secrets are never published).
    pub fn jwks_json(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let keys: Vec<serde_json::Value> = self
            .public
            .iter()
            .map(|(kid, x)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": kid, "x": b64.encode(x),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a token was refused. The `detail` strings are static so the 401
/// path does not allocate for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("token is not a JWT (three base64url segments)")]
    Malformed,
    #[error("token is too large")]
    TooLarge,
    #[error("token type is wrong for this use")]
    WrongType,
    #[error("token key id is unknown")]
    UnknownKey,
    #[error("token algorithm is not allowed for its key")]
    AlgorithmNotAllowed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is wrong")]
    WrongIssuer,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token claims are missing or malformed")]
    BadClaims,
    #[error("token has been revoked")]
    Revoked,
}

impl TokenError {
    pub fn detail(self) -> &'static str {
        match self {
            TokenError::Missing => "no bearer token",
            TokenError::Malformed => "token is not a JWT (three base64url segments)",
            TokenError::TooLarge => "token is too large",
            TokenError::WrongType => "token type is wrong for this use",
            TokenError::UnknownKey => "token key id is unknown",
            TokenError::AlgorithmNotAllowed => "token algorithm is not allowed for its key",
            TokenError::BadSignature => "token signature is invalid",
            TokenError::Expired => "token has expired",
            TokenError::NotYetValid => "token is not valid yet",
            TokenError::WrongIssuer => "token issuer is wrong",
            TokenError::WrongAudience => "token audience is wrong",
            TokenError::BadClaims => "token claims are missing or malformed",
            TokenError::Revoked => "token has been revoked",
        }
    }
}

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

pub struct Tokens {
    ring: KeyRing,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    access_validation: HashMap<Algorithm, Validation>,
    refresh_validation: HashMap<Algorithm, Validation>,
    /// Access tokens whose signature was checked, by SHA-256 of the token
    /// (an Ed25519 check costs more than the whole proxy hop, and even an
    /// HS256 check costs more than a hit).
    /// Bounded; a new `Tokens` (key reload) starts empty, so a key change
    /// flushes it. `exp`/`nbf` are re-checked on every hit.
    verified: Option<VerifiedCache>,
    leeway: u64,
}

/// A bounded map of verified access tokens. When full it is cleared: the
/// simplest bound that never serves a stale entry and costs one re-verify
/// per live token. The claims are shared (`Arc`), so a hit hands them out
/// without copying their strings: a cached check allocates nothing.
struct VerifiedCache {
    entries: std::sync::Mutex<HashMap<[u8; 32], Arc<AccessClaims>>>,
    capacity: usize,
}

impl Tokens {
    pub fn new(cfg: &crate::config::TokenConfig) -> Tokens {
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
            verified: (cfg.verified_cache_entries > 0).then(|| VerifiedCache {
                entries: std::sync::Mutex::new(HashMap::new()),
                capacity: cfg.verified_cache_entries,
            }),
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

    /// Verifies an access token: signature, `typ: at+jwt`, `iss`, `aud`,
    /// `exp`, `nbf` (with the configured leeway).
    /// A `srv` that is not a well-formed server id (a URL, say) is refused
    /// here, so no token can ever name an address.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = unix_now();
        let claims = match self.fast_access_with(token, now, &mut |c| c.owned()) {
            Some(c) => c,
            None => match &self.verified {
                Some(cache) => Arc::unwrap_or_clone(self.verify_cached(cache, token, now)?),
                None => self.verify(token, typ::ACCESS, &self.access_validation)?,
            },
        };
        if tether_protocol::validate::server_id("srv", &claims.srv).is_err() {
            return Err(TokenError::BadClaims);
        }
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
        let mut f = Some(f);
        let mut run = |c: &AccessClaimsRef<'_>| -> Result<R, TokenError> {
            if tether_protocol::validate::server_id("srv", c.srv).is_err() {
                return Err(TokenError::BadClaims);
            }
            // `run` is called at most once: by the fast path when it
            // accepts, else once after the general path.
            match f.take() {
                Some(f) => Ok(f(AccessView {
                    sub: c.sub,
                    srv: c.srv,
                    fam: c.fam,
                })),
                None => Err(TokenError::BadClaims),
            }
        };
        // With the cache on, every access token goes through it: a hit
        // (a hash of the token and a lookup) is cheaper than even the
        // HS256 fast path, and borrows the shared claims, so it allocates
        // nothing either.
        if let Some(cache) = &self.verified {
            let claims = self.verify_cached(cache, token, now)?;
            return run(&AccessClaimsRef::of(&claims));
        }
        if let Some(r) = self.fast_access_with(token, now, &mut run) {
            return r;
        }
        let claims: AccessClaims = self.verify(token, typ::ACCESS, &self.access_validation)?;
        run(&AccessClaimsRef::of(&claims))
    }

    /// The cache in front of the full check. A hit re-checks the times.
    fn verify_cached(
        &self,
        cache: &VerifiedCache,
        token: &str,
        now: u64,
    ) -> Result<Arc<AccessClaims>, TokenError> {
        use sha2::Digest;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let hit = cache
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(c) = hit {
            if c.exp < now.saturating_sub(self.leeway) {
                return Err(TokenError::Expired);
            }
            if c.nbf > now + self.leeway {
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
        let claims = Arc::new(claims);
        let mut entries = cache.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= cache.capacity {
            entries.clear();
        }
        entries.insert(key, claims.clone());
        Ok(claims)
    }

    /// Entries in the verified-token cache (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.verified.as_ref().map_or(0, |c| {
            c.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }

    pub fn jwks_json(&self) -> String {
        self.ring.jwks_json()
    }

    /// Verifies a refresh token (`typ: rt+jwt`).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        let claims: RefreshClaims = self.verify(token, typ::REFRESH, &self.refresh_validation)?;
        if tether_protocol::validate::server_id("srv", &claims.srv).is_err() {
            return Err(TokenError::BadClaims);
        }
        Ok(claims)
    }

    /// The fast path for a well-formed, valid HS256 access token: one
    /// base64 pass per segment into stack buffers, header and claims parsed
    /// in place, the HMAC from the precomputed key state, and the checks of
    /// DESIGN.md §3 made here (typ, kid, algorithm allow-list, signature,
    /// iss, aud, exp and nbf with the leeway). It only ever *accepts*:
    /// anything unusual (another algorithm, escaped strings, header fields
    /// other than alg/typ/kid, a large token) and every failure give
    /// `None`, and `verify_access` then runs the general `jsonwebtoken`
    /// path, which gives the precise error. So a token passes here only if
    /// it passes there, with the same claims (the tests check that).
    fn fast_access_with<R>(
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
        if c.iss != self.issuer || c.aud != self.audience {
            return None;
        }
        Some(accept(&c))
    }

    fn verify<T: serde::de::DeserializeOwned>(
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
        jsonwebtoken::decode::<T>(token, &key.key, validation)
            .map(|d| d.claims)
            .map_err(map_jwt_error)
    }

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
struct AccessClaimsRef<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    srv: &'a str,
    rgn: &'a str,
    #[serde(default)]
    home: Option<&'a str>,
    fam: &'a str,
}

/// What the request path reads from a verified access token.
#[derive(Debug, Clone, Copy)]
pub struct AccessView<'a> {
    pub sub: &'a str,
    pub srv: &'a str,
    pub fam: &'a str,
}

impl<'a> AccessClaimsRef<'a> {
    fn of(c: &'a AccessClaims) -> AccessClaimsRef<'a> {
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
    fn owned(&self) -> AccessClaims {
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

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidIssuer => TokenError::WrongIssuer,
        K::InvalidAudience => TokenError::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::AlgorithmNotAllowed,
        K::MissingRequiredClaim(_) | K::Json(_) | K::InvalidSubject => TokenError::BadClaims,
        K::InvalidToken | K::Base64(_) | K::Utf8(_) => TokenError::Malformed,
        _ => TokenError::BadClaims,
    }
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

/// The `jti` of a rotated refresh token: HMAC-SHA256 over the family and
/// the presented token's `jti`, keyed by a cluster-wide secret. Every
/// proxy derives the same successor for the same presented token.
pub fn successor_jti(key: &[u8; 32], family: &str, presented_jti: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"tether successor v1\0");
    m.update(family.as_bytes());
    m.update(b"\0");
    m.update(presented_jti.as_bytes());
    hex(&m.finalize().into_bytes()[..16])
}

/// Hex SHA-256: how token ids are named to discovery.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 128 random bits, hex: token ids and refresh families.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests;
