//! The key ring: its file format (`keyring.toml`) and the keys it holds.
//!
//! The ring maps `kid` to a key and its one allowed algorithm; one key
//! signs, all verify (rotation: add the new key, switch `signing_kid`,
//! remove the old key once its tokens have expired).

use std::collections::HashMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;
use sha2::Sha256;

use super::ids::decode_hex;

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
pub(super) const ED25519_PKCS8_PREFIX: [u8; 16] = [
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
pub(super) struct VerifyingKey {
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
    /// HS256: the HMAC with the key already absorbed, cloned per token so
    /// the fast path does not re-derive the inner and outer pads.
    pub(super) mac: Option<Hmac<Sha256>>,
}

/// The signing key and every verifying key, by `kid`.
#[derive(Clone)]
pub struct KeyRing {
    pub(super) signing_kid: String,
    pub(super) signing_alg: Algorithm,
    pub(super) signing: EncodingKey,
    pub(super) verifying: HashMap<String, VerifyingKey>,
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
