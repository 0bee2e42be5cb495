//! The proxy's own idempotency answers, as `application/problem+json`
//! (RFC 9457): `type`, `title`, `status`, `detail`.
//!
//! The `type` values are stable identifiers (URNs), not links: clients
//! compare them, nothing dereferences them. `docs/idempotency.md` lists
//! them.

use bytes::Bytes;
use serde::Serialize;

use super::key::KeyError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem answer: status, body bytes, and the `Retry-After` seconds
/// to send with it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub body: Bytes,
    pub retry_after: Option<u32>,
}

/// The kinds of idempotency problem, one `type` URN each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `400`: a covered request on a `required_prefixes` path without a key.
    KeyMissing,
    /// `400`: the key does not parse or breaks a limit.
    KeyMalformed,
    /// `409`: a request with this key is still being processed.
    InFlight,
    /// `422`: the key was used for another request (method, path or body).
    KeyReused,
    /// `503`: the idempotency store cannot be asked (`on_store_error =
    /// "reject"`).
    StoreUnavailable,
}

impl Kind {
    pub fn type_uri(self) -> &'static str {
        match self {
            Kind::KeyMissing => "urn:tether:problem:idempotency-key-missing",
            Kind::KeyMalformed => "urn:tether:problem:idempotency-key-malformed",
            Kind::InFlight => "urn:tether:problem:idempotency-key-in-flight",
            Kind::KeyReused => "urn:tether:problem:idempotency-key-reused",
            Kind::StoreUnavailable => "urn:tether:problem:idempotency-store-unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Kind::KeyMissing | Kind::KeyMalformed => 400,
            Kind::InFlight => 409,
            Kind::KeyReused => 422,
            Kind::StoreUnavailable => 503,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::KeyMissing => "Idempotency-Key required",
            Kind::KeyMalformed => "Malformed Idempotency-Key",
            Kind::InFlight => "Request with this Idempotency-Key in progress",
            Kind::KeyReused => "Idempotency-Key reused for another request",
            Kind::StoreUnavailable => "Idempotency store unavailable",
        }
    }

    /// Seconds a client should wait before retrying, where a retry with
    /// the same key can succeed.
    fn retry_after(self) -> Option<u32> {
        match self {
            Kind::InFlight => Some(1),
            Kind::StoreUnavailable => Some(2),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// Builds a problem answer of `kind` with a human-readable `detail`.
pub fn problem(kind: Kind, detail: &str) -> Problem {
    let status = kind.status();
    let body = Body {
        type_: kind.type_uri(),
        title: kind.title(),
        status,
        detail,
    };
    // Serialising a struct of strings and an integer cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    Problem {
        status,
        body: Bytes::from(body),
        retry_after: kind.retry_after(),
    }
}

pub fn key_missing() -> Problem {
    problem(
        Kind::KeyMissing,
        "this endpoint requires an Idempotency-Key header, e.g. Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
    )
}

pub fn key_malformed(e: &KeyError) -> Problem {
    problem(Kind::KeyMalformed, &e.to_string())
}

pub fn in_flight() -> Problem {
    problem(
        Kind::InFlight,
        "a request with this Idempotency-Key is still being processed; retry later with the same key",
    )
}

pub fn key_reused() -> Problem {
    problem(
        Kind::KeyReused,
        "this Idempotency-Key was already used for a request with another method, path or body; use a fresh key for a new request",
    )
}

pub fn store_unavailable() -> Problem {
    problem(
        Kind::StoreUnavailable,
        "the idempotency store cannot be reached, so the request was not forwarded; retry later with the same key",
    )
}
