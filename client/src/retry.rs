//! What to do with an answer: hand it to the caller, or act on a proxy
//! signal and retry (docs/design.md §4). A pure function over status, headers
//! and body, so it is tested with canned answers.
//!
//! Only answers that prove the request did not reach the app are acted on:
//! `421` (wrong server), `503` with `Tether-Relock: refresh` (locked server
//! gone), `401` with `error: invalid_token` (the proxy refused the
//! token) and, for a request with an `Idempotency-Key`, the proxy's `409`
//! `idempotency-key-in-flight` problem (the first attempt is still at the
//! app; this one was not forwarded). Everything else, including the app's
//! own 4xx/5xx, is returned.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use tether_protocol::headers;
use tether_protocol::wire::{ErrorBody, ServerSummary};

use crate::idempotency::IN_FLIGHT_TYPE;
use crate::session::check_url;

/// The SDK's reading of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Give the answer to the caller.
    Return,
    /// `421`: resend to `url`; `server` is the body's `lockedServer`, if any.
    Relock {
        url: String,
        server: Option<ServerSummary>,
    },
    /// `503` + `Tether-Relock: refresh`: refresh now, then resend.
    Refresh,
    /// `401 invalid_token` from the proxy: refresh once, then resend.
    InvalidToken,
    /// `409` problem `idempotency-key-in-flight` from the proxy: the first
    /// request with this key is still at the app; resend the same request
    /// (same key) after `retry_after`. Acted on only when a key was sent.
    InFlight { retry_after: Duration },
}

pub(crate) fn classify(status: StatusCode, h: &HeaderMap, body: &[u8]) -> Action {
    let relock = h
        .get(headers::RELOCK)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match status {
        StatusCode::MISDIRECTED_REQUEST => {
            let server = serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .and_then(|b| b.locked_server)
                .filter(|s| check_url(&s.url).is_ok());
            // The header is the contract; the body's URL is the fallback.
            let url = relock
                .filter(|u| check_url(u).is_ok())
                .map(str::to_owned)
                .or_else(|| server.as_ref().map(|s| s.url.clone()));
            match url {
                Some(url) => Action::Relock { url, server },
                None => {
                    tracing::warn!(
                        "421 without a usable Tether-Relock URL: returned to the caller"
                    );
                    Action::Return
                }
            }
        }
        StatusCode::SERVICE_UNAVAILABLE
            if relock.is_some_and(|v| v.eq_ignore_ascii_case(headers::RELOCK_REFRESH)) =>
        {
            Action::Refresh
        }
        StatusCode::UNAUTHORIZED => {
            let by_body =
                serde_json::from_slice::<ErrorBody>(body).is_ok_and(|b| b.error == "invalid_token");
            let by_header = h
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("invalid_token"));
            if by_body || by_header {
                Action::InvalidToken
            } else {
                Action::Return
            }
        }
        StatusCode::CONFLICT if is_in_flight_problem(h, body) => {
            let secs = h
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            Action::InFlight {
                retry_after: Duration::from_secs(secs),
            }
        }
        _ => Action::Return,
    }
}

/// The proxy's problem+json for a key whose first request is in flight
/// (an app's own `409` has another body).
fn is_in_flight_problem(h: &HeaderMap, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Problem<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"))
        && serde_json::from_slice::<Problem>(body).is_ok_and(|p| p.kind == IN_FLIGHT_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    const LOCKED: &[u8] =
        br#"{"error":"wrong_server","lockedServer":{"id":"us-1","url":"http://10.0.0.2:8080","region":"us"}}"#;

    #[test]
    fn relock_from_header_and_body() {
        let a = classify(
            StatusCode::MISDIRECTED_REQUEST,
            &hdrs(&[(headers::RELOCK, "http://10.0.0.2:8080")]),
            LOCKED,
        );
        let want = ServerSummary {
            id: "us-1".into(),
            url: "http://10.0.0.2:8080".into(),
            region: "us".into(),
        };
        assert_eq!(
            a,
            Action::Relock {
                url: "http://10.0.0.2:8080".into(),
                server: Some(want.clone())
            }
        );
        // Header only.
        let a = classify(
            StatusCode::MISDIRECTED_REQUEST,
            &hdrs(&[(headers::RELOCK, "http://h:1")]),
            b"not json",
        );
        assert_eq!(
            a,
            Action::Relock {
                url: "http://h:1".into(),
                server: None
            }
        );
        // Body only.
        let a = classify(StatusCode::MISDIRECTED_REQUEST, &HeaderMap::new(), LOCKED);
        assert_eq!(
            a,
            Action::Relock {
                url: want.url.clone(),
                server: Some(want)
            }
        );
    }

    #[test]
    fn unusable_relock_is_returned() {
        for h in [
            hdrs(&[]),
            hdrs(&[(headers::RELOCK, "refresh")]),
            hdrs(&[(headers::RELOCK, "file:///etc/passwd")]),
        ] {
            assert_eq!(
                classify(StatusCode::MISDIRECTED_REQUEST, &h, b"{}"),
                Action::Return
            );
        }
        let bad_body =
            br#"{"error":"wrong_server","lockedServer":{"id":"x","url":"nope","region":"r"}}"#;
        assert_eq!(
            classify(StatusCode::MISDIRECTED_REQUEST, &hdrs(&[]), bad_body),
            Action::Return
        );
    }

    #[test]
    fn refresh_only_with_the_relock_header() {
        let body = br#"{"error":"server_unavailable","action":"refresh"}"#;
        let h = hdrs(&[(headers::RELOCK, "refresh"), ("retry-after", "1")]);
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &h, body),
            Action::Refresh
        );
        assert_eq!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                &hdrs(&[(headers::RELOCK, "Refresh")]),
                b""
            ),
            Action::Refresh
        );
        // The proxy's own upstream outage, or the app's 503: not a lock problem.
        let h = hdrs(&[("retry-after", "30")]);
        assert_eq!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                &h,
                br#"{"error":"upstream_unavailable"}"#
            ),
            Action::Return
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b""),
            Action::Return
        );
    }

    #[test]
    fn invalid_token_by_body_or_header() {
        let body = br#"{"error":"invalid_token","detail":"expired"}"#;
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body),
            Action::InvalidToken
        );
        let h = hdrs(&[("www-authenticate", r#"Bearer error="invalid_token""#)]);
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &h, b""),
            Action::InvalidToken
        );
        // The app's own 401 (for example bad credentials) is the caller's.
        assert_eq!(
            classify(
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
                br#"{"error":"bad_credentials"}"#
            ),
            Action::Return
        );
    }

    #[test]
    fn in_flight_only_from_the_proxy_problem() {
        let body = br#"{"type":"urn:tether:problem:idempotency-key-in-flight","title":"t","status":409,"detail":"d"}"#;
        let h = hdrs(&[
            ("content-type", "application/problem+json"),
            ("retry-after", "3"),
        ]);
        assert_eq!(
            classify(StatusCode::CONFLICT, &h, body),
            Action::InFlight {
                retry_after: Duration::from_secs(3)
            }
        );
        let h = hdrs(&[("content-type", "application/problem+json")]);
        assert_eq!(
            classify(StatusCode::CONFLICT, &h, body),
            Action::InFlight {
                retry_after: Duration::from_secs(1)
            }
        );
        // The app's own 409s, and other problems, are the caller's.
        let json = hdrs(&[("content-type", "application/json")]);
        assert_eq!(classify(StatusCode::CONFLICT, &json, body), Action::Return);
        assert_eq!(
            classify(
                StatusCode::CONFLICT,
                &json,
                br#"{"error":"order_checked_out"}"#
            ),
            Action::Return
        );
        let reused = br#"{"type":"urn:tether:problem:idempotency-key-reused","status":422}"#;
        let p = hdrs(&[("content-type", "application/problem+json")]);
        assert_eq!(classify(StatusCode::CONFLICT, &p, reused), Action::Return);
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &p, reused),
            Action::Return
        );
    }

    #[test]
    fn app_answers_are_returned() {
        for s in [200u16, 201, 400, 404, 409, 413, 500, 502] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(
                classify(s, &hdrs(&[(headers::RELOCK, "refresh")]), b"{}"),
                Action::Return,
                "{s}"
            );
        }
    }
}
