//! The client's lock: its tokens, their lifetime and the server it names,
//! and how they are read from a login answer.

use std::time::Duration;

use reqwest::header::HeaderMap;
use tether_protocol::headers;
use tether_protocol::wire::{RefreshResponse, ServerSummary};
use tokio::time::Instant;

use crate::Error;

/// The current session. `generation` grows by one with every login and
/// refresh, so a task that saw generation `g` fail can tell whether someone
/// else already replaced the session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// Access-token lifetime as announced by the server.
    pub lifetime: Duration,
    /// When the answer carrying the access token was received.
    pub obtained: Instant,
    pub server: ServerSummary,
    pub generation: u64,
}

impl Session {
    /// When the access token expires, by the local clock.
    pub fn expires_at(&self) -> Instant {
        self.obtained + self.lifetime
    }

    /// Whether the token should be refreshed before the next request: less
    /// than `margin × lifetime` of it remains (or it has expired).
    pub fn refresh_due(&self, now: Instant, margin: f64) -> bool {
        refresh_due(self.obtained, self.lifetime, now, margin)
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.expires_at()
    }

    pub fn from_refresh(r: RefreshResponse, now: Instant, generation: u64) -> Result<Self, Error> {
        if r.expires_in == 0 {
            return Err(bad_refresh("expiresIn is 0"));
        }
        check_url(&r.server.url).map_err(|d| bad_refresh(&format!("server.url: {d}")))?;
        if r.access_token.is_empty() || r.refresh_token.is_empty() {
            return Err(bad_refresh("empty token"));
        }
        Ok(Session {
            access_token: r.access_token,
            refresh_token: r.refresh_token,
            lifetime: Duration::from_secs(r.expires_in),
            obtained: now,
            server: r.server,
            generation,
        })
    }
}

fn bad_refresh(detail: &str) -> Error {
    Error::BadAnswer {
        what: "refresh",
        detail: detail.to_owned(),
    }
}

/// Less than `margin × lifetime` remains at `now` (or the token expired).
/// `margin` is a fraction in `[0, 1)`; `0` refreshes only once expired.
pub(crate) fn refresh_due(
    obtained: Instant,
    lifetime: Duration,
    now: Instant,
    margin: f64,
) -> bool {
    let remaining = (obtained + lifetime).saturating_duration_since(now);
    let threshold =
        Duration::try_from_secs_f64(lifetime.as_secs_f64() * margin).unwrap_or(Duration::ZERO);
    remaining.is_zero() || remaining < threshold
}

/// The `Tether-*` headers of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginHeaders {
    pub access_token: String,
    pub refresh_token: String,
    /// `Tether-Expires-In`, seconds, at least 1.
    pub expires_in: u64,
    pub server: ServerSummary,
}

/// Reads the login headers; a missing, non-text or malformed one is an
/// [`Error::BadAnswer`] naming it.
pub fn parse_login_headers(h: &HeaderMap) -> Result<LoginHeaders, Error> {
    let access_token = header(h, headers::ACCESS_TOKEN)?;
    let refresh_token = header(h, headers::REFRESH_TOKEN)?;
    let expires_raw = header(h, headers::EXPIRES_IN)?;
    let expires_in = match expires_raw.parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(bad_login(format!(
                "header {}: {expires_raw:?} is not a positive number of seconds",
                headers::EXPIRES_IN
            )))
        }
    };
    let id = header(h, headers::SERVER_ID)?;
    let url = header(h, headers::SERVER_URL)?;
    check_url(&url).map_err(|d| bad_login(format!("header {}: {d}", headers::SERVER_URL)))?;
    let region = header(h, headers::SERVER_REGION)?;
    Ok(LoginHeaders {
        access_token,
        refresh_token,
        expires_in,
        server: ServerSummary { id, url, region },
    })
}

fn bad_login(detail: String) -> Error {
    Error::BadAnswer {
        what: "login",
        detail,
    }
}

fn header(h: &HeaderMap, name: &'static str) -> Result<String, Error> {
    let value = h
        .get(name)
        .ok_or_else(|| bad_login(format!("header {name} is missing")))?;
    let text = value
        .to_str()
        .map_err(|_| bad_login(format!("header {name} is not visible ASCII")))?
        .trim();
    if text.is_empty() {
        return Err(bad_login(format!("header {name} is empty")));
    }
    Ok(text.to_owned())
}

/// A server URL the SDK will send requests to: absolute http(s) with a host.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{url:?} is not an http(s) URL with a host"));
    }
    Ok(())
}

/// `base` + `path`, with exactly one slash between them.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn login_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (headers::ACCESS_TOKEN, "at"),
            (headers::REFRESH_TOKEN, "rt"),
            (headers::EXPIRES_IN, "120"),
            (headers::SERVER_ID, "eu-1"),
            (headers::SERVER_URL, "http://127.0.0.1:8080"),
            (headers::SERVER_REGION, "eu"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_login_headers() {
        let l = parse_login_headers(&login_headers()).unwrap();
        assert_eq!(l.access_token, "at");
        assert_eq!(l.refresh_token, "rt");
        assert_eq!(l.expires_in, 120);
        assert_eq!(
            l.server,
            ServerSummary {
                id: "eu-1".into(),
                url: "http://127.0.0.1:8080".into(),
                region: "eu".into()
            }
        );
    }

    #[test]
    fn header_names_are_case_insensitive_on_the_wire() {
        // HeaderMap normalises names; a server sending Tether-Server-Id works.
        let mut h = login_headers();
        h.remove(headers::SERVER_ID);
        h.insert(
            reqwest::header::HeaderName::from_static("tether-server-id"),
            HeaderValue::from_static("x"),
        );
        assert_eq!(parse_login_headers(&h).unwrap().server.id, "x");
    }

    #[test]
    fn bad_login_headers_name_the_header() {
        let all = [
            headers::ACCESS_TOKEN,
            headers::REFRESH_TOKEN,
            headers::EXPIRES_IN,
            headers::SERVER_ID,
            headers::SERVER_URL,
            headers::SERVER_REGION,
        ];
        for name in all {
            let mut h = login_headers();
            h.remove(name);
            let e = parse_login_headers(&h).unwrap_err();
            assert!(
                matches!(&e, Error::BadAnswer { what: "login", detail } if detail.contains(name)),
                "{e}"
            );
        }
        for (name, value) in [
            (headers::EXPIRES_IN, "0"),
            (headers::EXPIRES_IN, "-5"),
            (headers::EXPIRES_IN, "soon"),
            (headers::SERVER_URL, "ftp://x"),
            (headers::SERVER_URL, "not a url"),
            (headers::SERVER_URL, "http://"),
            (headers::ACCESS_TOKEN, " "),
        ] {
            let mut h = login_headers();
            h.insert(name, HeaderValue::from_static(value));
            let e = parse_login_headers(&h).unwrap_err();
            assert!(
                matches!(&e, Error::BadAnswer { detail, .. } if detail.contains(name)),
                "{name}={value}: {e}"
            );
        }
        let mut h = login_headers();
        h.insert(
            headers::SERVER_ID,
            HeaderValue::from_bytes(b"\xffbad").unwrap(),
        );
        assert!(parse_login_headers(&h).is_err());
    }

    #[test]
    fn expiry_math() {
        let t0 = Instant::now();
        let life = Duration::from_secs(100);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!refresh_due(t0, life, at(0), 0.2));
        assert!(!refresh_due(t0, life, at(79), 0.2));
        assert!(!refresh_due(t0, life, at(80), 0.2)); // exactly 20 s left
        assert!(refresh_due(t0, life, at(81), 0.2));
        assert!(refresh_due(t0, life, at(100), 0.2));
        assert!(refresh_due(t0, life, at(1000), 0.2));
        // Margin 0: only once expired.
        assert!(!refresh_due(t0, life, at(99), 0.0));
        assert!(refresh_due(t0, life, at(100), 0.0));
        // A nonsensical margin never panics.
        assert!(!refresh_due(t0, life, at(1), f64::NAN));
    }

    #[test]
    fn session_from_refresh_checks_the_answer() {
        let good = RefreshResponse {
            access_token: "a".into(),
            refresh_token: "r".into(),
            token_type: "Bearer".into(),
            expires_in: 60,
            server: ServerSummary {
                id: "us-1".into(),
                url: "http://127.0.0.1:1".into(),
                region: "us".into(),
            },
            server_changed: true,
            previous_server_id: "eu-1".into(),
            reason: "moved_region".into(),
        };
        let now = Instant::now();
        let s = Session::from_refresh(good.clone(), now, 7).unwrap();
        assert_eq!(
            (s.lifetime, s.generation, s.expires_at()),
            (Duration::from_secs(60), 7, now + Duration::from_secs(60))
        );
        assert!(!s.expired(now));
        assert!(s.expired(now + Duration::from_secs(60)));
        assert!(Session::from_refresh(
            RefreshResponse {
                expires_in: 0,
                ..good.clone()
            },
            now,
            1
        )
        .is_err());
        let mut bad = good.clone();
        bad.server.url = "javascript:alert(1)".into();
        assert!(Session::from_refresh(bad, now, 1).is_err());
        assert!(Session::from_refresh(
            RefreshResponse {
                access_token: String::new(),
                ..good
            },
            now,
            1
        )
        .is_err());
    }

    #[test]
    fn an_extended_refresh_keeps_the_same_refresh_token() {
        // docs/design.md §6b: with no discovery node answering, the proxy
        // hands the presented refresh token back unrotated; the session
        // simply keeps it, with the new access token.
        let answer = RefreshResponse {
            access_token: "a2".into(),
            refresh_token: "r1".into(),
            token_type: "Bearer".into(),
            expires_in: 60,
            server: ServerSummary {
                id: "eu-1".into(),
                url: "http://127.0.0.1:1".into(),
                region: "eu".into(),
            },
            server_changed: false,
            previous_server_id: "eu-1".into(),
            reason: "discovery_unavailable".into(),
        };
        let s = Session::from_refresh(answer, Instant::now(), 2).unwrap();
        assert_eq!(
            (s.access_token.as_str(), s.refresh_token.as_str()),
            ("a2", "r1")
        );
    }

    #[test]
    fn joins_urls() {
        assert_eq!(join("http://a:1", "/x"), "http://a:1/x");
        assert_eq!(join("http://a:1/", "/x"), "http://a:1/x");
        assert_eq!(join("http://a:1", "x"), "http://a:1/x");
        assert_eq!(
            join("http://a:1/base/", "/auth/login"),
            "http://a:1/base/auth/login"
        );
    }
}
