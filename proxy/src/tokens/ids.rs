//! Token ids, hex and the clock.

use std::time::{SystemTime, UNIX_EPOCH};

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
