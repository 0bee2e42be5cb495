//! The authenticated hop marker on proxy-to-proxy forwards (forward mode).
//!
//! `X-Tether-Hop: v1.<from-id>.<unix-seconds>.<nonce>.<hex HMAC-SHA256>`
//! over the method, path and query, the timestamp, the nonce and the
//! sender id, keyed by a key derived from the cluster token that every
//! proxy of the cluster holds. A proxy that receives a valid marker knows
//! the request has already made its one hop and never forwards it again.
//! A marker that does not verify, is older (or newer) than [`MAX_SKEW`], or
//! was seen before (a replay: each marker's nonce is accepted once) is
//! refused.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use tether_protocol::headers::HOP;

use crate::tokens::unix_now;

type HmacSha256 = Hmac<Sha256>;

/// Largest accepted clock difference between two proxies, seconds.
pub const MAX_SKEW: u64 = 30;

/// Most markers remembered for replay detection; past it, the oldest are
/// forgotten first (they are about to go stale anyway).
const MAX_REMEMBERED: usize = 200_000;

pub struct HopKey {
    key: [u8; 32],
    /// Nonces accepted in the last `2 × MAX_SKEW` seconds, with their time.
    seen: Mutex<HashMap<u64, u64>>,
}

impl HopKey {
    /// Derives the hop key from the cluster token, so a leaked hop marker
    /// key does not also let someone heartbeat into discovery.
    pub fn derive(cluster_token: &str) -> HopKey {
        let mut h = Sha256::new();
        h.update(b"tether hop marker v1\0");
        h.update(cluster_token.as_bytes());
        HopKey {
            key: h.finalize().into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, method: &str, path: &str, ts: u64, nonce: u64, from: &str) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [
            method,
            path,
            &ts.to_string(),
            &format!("{nonce:016x}"),
            from,
        ] {
            m.update(part.as_bytes());
            m.update(b"\n");
        }
        m
    }

    pub fn sign(&self, method: &str, path: &str, ts: u64, from: &str) -> String {
        let nonce: u64 = rand::random();
        let tag = self
            .mac(method, path, ts, nonce, from)
            .finalize()
            .into_bytes();
        format!("v1.{from}.{ts}.{nonce:016x}.{}", crate::tokens::hex(&tag))
    }

    /// Checks a marker and records its nonce; returns the sender id.
    pub fn verify<'a>(
        &self,
        marker: &'a str,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<&'a str, HopError> {
        let mut parts = marker.split('.');
        let (Some("v1"), Some(from), Some(ts), Some(nonce), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(HopError::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| HopError::Malformed)?;
        if nonce.len() != 16 {
            return Err(HopError::Malformed);
        }
        let nonce = u64::from_str_radix(nonce, 16).map_err(|_| HopError::Malformed)?;
        if ts.abs_diff(now) > MAX_SKEW {
            return Err(HopError::Stale);
        }
        let tag = decode_hex(tag).ok_or(HopError::Malformed)?;
        self.mac(method, path, ts, nonce, from)
            .verify_slice(&tag)
            .map_err(|_| HopError::BadSignature)?;
        // Only an authentic marker reaches the replay cache, so forged
        // markers cannot fill it.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, t| now.saturating_sub(*t) <= 2 * MAX_SKEW);
        }
        if seen.insert(nonce, ts).is_some() {
            return Err(HopError::Replayed);
        }
        Ok(from)
    }

    /// The marker for forwarding `req` one hop, from server `from`.
    pub fn mark(&self, req: &RequestHeader, from: &str) -> String {
        self.sign(req.method.as_str(), path_and_query(req), unix_now(), from)
    }

    /// Checks `req`'s marker, if it has one: `Ok(true)` = a valid marker
    /// (the request already made its one hop), `Ok(false)` = none.
    pub fn check_request(&self, req: &RequestHeader) -> Result<bool, HopError> {
        let Some(marker) = req.headers.get(HOP) else {
            return Ok(false);
        };
        let marker = marker.to_str().map_err(|_| HopError::Malformed)?;
        self.verify(marker, req.method.as_str(), path_and_query(req), unix_now())?;
        Ok(true)
    }

    /// Forgets nonces too old to be accepted anyway (called periodically).
    pub fn prune(&self, now: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| now.saturating_sub(*t) <= 2 * MAX_SKEW);
    }
}

/// What a marker signs of the request's target.
fn path_and_query(req: &RequestHeader) -> &str {
    req.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// A 32-byte HMAC tag in hex.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    crate::tokens::decode_hex(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    #[error("hop marker is malformed")]
    Malformed,
    #[error("hop marker is too old or from the future")]
    Stale,
    #[error("hop marker signature is invalid")]
    BadSignature,
    #[error("hop marker was already used (replay)")]
    Replayed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_tamper_and_replay() {
        let k = HopKey::derive("cluster-token-for-tests");
        let m = k.sign("GET", "/orders/1?x=1", 1000, "eu-1");
        assert_eq!(
            k.verify(&m, "POST", "/orders/1?x=1", 1010),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            k.verify(&m, "GET", "/orders/2?x=1", 1010),
            Err(HopError::BadSignature)
        );
        assert_eq!(
            k.verify(&m, "GET", "/orders/1?x=1", 1000 + MAX_SKEW + 1),
            Err(HopError::Stale)
        );
        let other = HopKey::derive("another-cluster-token");
        assert_eq!(
            other.verify(&m, "GET", "/orders/1?x=1", 1000),
            Err(HopError::BadSignature)
        );
        let forged = m.replacen("eu-1", "us-1", 1);
        assert_eq!(
            k.verify(&forged, "GET", "/orders/1?x=1", 1000),
            Err(HopError::BadSignature)
        );
        assert_eq!(k.verify(&m, "GET", "/orders/1?x=1", 1010), Ok("eu-1"));
        assert_eq!(
            k.verify(&m, "GET", "/orders/1?x=1", 1011),
            Err(HopError::Replayed)
        );
        // A fresh marker for the same request is fine.
        let again = k.sign("GET", "/orders/1?x=1", 1000, "eu-1");
        assert_eq!(k.verify(&again, "GET", "/orders/1?x=1", 1012), Ok("eu-1"));
        assert_eq!(k.verify("v1.a.b", "GET", "/", 0), Err(HopError::Malformed));
        assert_eq!(k.verify("garbage", "GET", "/", 0), Err(HopError::Malformed));
        k.prune(1000 + 3 * MAX_SKEW);
        assert!(k.seen.lock().unwrap().is_empty());
    }
}
