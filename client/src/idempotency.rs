//! `Idempotency-Key` on writes (docs/idempotency.md): one fresh key per
//! call of [`crate::Client::request`] for POST and PATCH, sent unchanged
//! with every resend of that call, so the proxy applies the write at most
//! once and answers a resend with the first answer.

use reqwest::header::HeaderValue;
use reqwest::Method;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header marking a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// The problem type of a `409`: the first request with the key is still
/// being processed.
pub const IN_FLIGHT_TYPE: &str = "urn:tether:problem:idempotency-key-in-flight";

/// Whether calls with `method` get a key.
pub(crate) fn covered(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PATCH
}

/// A fresh key: a random (version 4) UUID as a structured-field string,
/// i.e. in double quotes, as the draft specifies.
pub fn new_key() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let s = format!(
        "\"{}-{}-{}-{}-{}\"",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    // Quotes, hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_v4_uuids_and_fresh() {
        let a = new_key();
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 38, "{s}");
        assert!(s.starts_with('"') && s.ends_with('"'), "{s}");
        let inner = &s[1..37];
        let groups: Vec<usize> = inner.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{s}");
        assert_eq!(&inner[14..15], "4", "version 4: {s}");
        assert!("89ab".contains(&inner[19..20]), "variant: {s}");
        assert!(inner.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(a, new_key());
    }

    #[test]
    fn only_post_and_patch_are_covered() {
        assert!(covered(&Method::POST) && covered(&Method::PATCH));
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(!covered(&m), "{m}");
        }
    }
}
