//! `POST /auth/login`: the body goes to the upstream's login path; a
//! success is answered with the upstream's answer plus a token pair
//! locked to this server (or to the user's home region).

use bytes::Bytes;
use http::HeaderMap;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tether_protocol::headers as h;
use tether_protocol::wire::{ErrorBody, ServerSummary};

use super::{read_body, summary, too_large, Result};
use crate::config::Source;
use crate::headers::{for_upstream, forward_request_header, pass_response_header};
use crate::metrics::Login;
use crate::respond;
use crate::state::State;
use crate::tokens::LockTarget;

/// Pulls a login field from the upstream's answer, exactly as the app
/// wrote it (`None` = absent, JSON null, or not usable):
/// - a string is taken byte for byte; one with leading or trailing
///   whitespace is refused, since the app (or a header parser) may trim
///   it and two users would then share a subject;
/// - a JSON number is taken only when it is an integer, in its exact
///   decimal text (`18446744073709551617` stays itself; `1e2`, `100.0`
///   are refused rather than rewritten);
/// - anything else (object, array, boolean) is refused.
fn extract(source: &Source, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let value = match source {
        Source::Header(name) => headers.get(name.as_str())?.to_str().ok()?.to_owned(),
        Source::JsonPointer(ptr) => {
            let raw = pointer_raw(body, ptr)?;
            let text = raw.get().trim();
            if text.starts_with('"') {
                serde_json::from_str::<String>(text).ok()?
            } else if is_integer_text(text) {
                text.to_owned()
            } else {
                return None;
            }
        }
    };
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return None;
    }
    Some(value)
}

/// `-?(0|[1-9][0-9]*)`: a JSON integer's text.
fn is_integer_text(t: &str) -> bool {
    let digits = t.strip_prefix('-').unwrap_or(t);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

/// The raw JSON text at an RFC 6901 pointer, without converting numbers.
fn pointer_raw<'a>(body: &'a [u8], ptr: &str) -> Option<&'a serde_json::value::RawValue> {
    use serde_json::value::RawValue;
    use std::collections::HashMap;
    let mut at: &RawValue = serde_json::from_slice(body).ok()?;
    if ptr.is_empty() {
        return Some(at);
    }
    for token in ptr.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = at.get().trim_start();
        at = if text.starts_with('{') {
            let mut map: HashMap<String, &RawValue> = serde_json::from_str(at.get()).ok()?;
            map.remove(&token)?
        } else if text.starts_with('[') {
            let list: Vec<&RawValue> = serde_json::from_str(at.get()).ok()?;
            let i: usize = token.parse().ok()?;
            *list.get(i)?
        } else {
            return None;
        };
    }
    Some(at)
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

pub(super) async fn login(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit, state.cfg.limits.body_read_timeout).await? else {
        state.metrics.login(Login::TooLarge);
        return too_large(session, limit).await;
    };
    let Some(backend) = crate::upstream::select(&state.upstream) else {
        state.metrics.login(Login::UpstreamUnavailable);
        return respond::upstream_unavailable(session).await;
    };
    let url = format!("http://{}{}", backend.addr, state.cfg.login.upstream_path);
    let mut call = state.upstream_http.post(&url).body(body);
    // The same header rules as the request path: one function for both.
    let mut outgoing = session.req_header().clone();
    for_upstream(session, &mut outgoing, &state.cfg.routing.trusted_proxies)?;
    for (name, value) in outgoing.headers.iter() {
        if forward_request_header(name.as_str()) {
            call = call.header(name, value);
        }
    }
    let answer = match call.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("login call to the upstream {url} failed: {e}");
            state.metrics.login(Login::UpstreamError);
            let body = ErrorBody::new("upstream_error").detail("the upstream login call failed");
            return respond::error(session, 502, &body, &[]).await;
        }
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = match read_limited(answer, state.cfg.limits.login_answer_bytes).await {
        Some(b) => b,
        None => {
            state.metrics.login(Login::UpstreamError);
            let body = ErrorBody::new("upstream_error")
                .detail("the upstream login answer was too large or broken");
            return respond::error(session, 502, &body, &[]).await;
        }
    };

    let mut out = ResponseHeader::build(status, Some(headers.len() + 8))?;
    for (name, value) in headers.iter() {
        if pass_response_header(name.as_str()) {
            out.append_header(name.clone(), value.clone())?;
        }
    }
    out.insert_header("content-length", bytes.len().to_string())?;

    if (200..300).contains(&status) {
        let subject =
            extract(&state.cfg.login.subject, &headers, &bytes).filter(|s| valid_subject(s));
        let Some(subject) = subject else {
            tracing::error!(
                "the upstream login answer has no usable subject where login.subject points"
            );
            state.metrics.login(Login::MappingFailed);
            let body = ErrorBody::new("login_mapping_failed")
                .detail("the upstream accepted the login but its answer has no subject where login.subject points");
            return respond::error(session, 502, &body, &[]).await;
        };
        let home = state
            .cfg
            .login
            .home_region
            .as_ref()
            .and_then(|src| extract(src, &headers, &bytes))
            .filter(|r| {
                let ok = tether_protocol::validate::region("homeRegion", r).is_ok();
                if !ok {
                    tracing::warn!(
                        "ignoring an invalid home region from the upstream login answer"
                    );
                }
                ok
            });
        let target = login_target(state, home.as_deref());
        let minted = match state.tokens.mint(
            &subject,
            LockTarget {
                server_id: &target.id,
                region: &target.region,
            },
            home.as_deref(),
            None,
        ) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("minting tokens failed: {e}");
                let body = ErrorBody::new("internal").detail("could not mint tokens");
                return respond::error(session, 500, &body, &[]).await;
            }
        };
        out.insert_header(h::ACCESS_TOKEN, minted.access)?;
        out.insert_header(h::REFRESH_TOKEN, minted.refresh)?;
        out.insert_header(h::EXPIRES_IN, minted.expires_in.to_string())?;
        out.insert_header(h::SERVER_ID, target.id)?;
        out.insert_header(h::SERVER_URL, target.url)?;
        out.insert_header(h::SERVER_REGION, target.region)?;
        out.insert_header("cache-control", "no-store")?;
        state.metrics.login(Login::Ok);
    } else {
        state.metrics.login(Login::Rejected);
    }
    session.write_response_header(Box::new(out), false).await?;
    session
        .write_response_body(Some(Bytes::from(bytes)), true)
        .await
}

async fn read_limited(mut answer: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return None;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(buf),
            Err(_) => return None,
        }
    }
}

/// Where a fresh login is locked: this server, unless the user's home
/// region is elsewhere and has an eligible server, then the least-loaded
/// one there; or unless this server is draining (an operator's drain, or
/// its shutdown grace), then the least-loaded eligible server of its
/// region, else anywhere, else (nobody else) still this one.
fn login_target(state: &State, home: Option<&str>) -> ServerSummary {
    let me = &state.cfg.server;
    let view = state.registry.load();
    if view.registry.get(&me.id).is_some_and(|s| s.draining) || state.lifecycle.shutting_down() {
        let other = |s: &tether_protocol::wire::ServerEntry| s.id == me.id;
        let home_pick = home
            .filter(|r| *r != me.region)
            .and_then(|h| view.registry.least_loaded_in(h, other));
        if let Some(s) = home_pick
            .or_else(|| view.registry.least_loaded_in(&me.region, other))
            .or_else(|| view.registry.least_loaded_anywhere(other))
        {
            return s.summary();
        }
    }
    if let Some(home) = home.filter(|r| *r != me.region) {
        if let Some(s) = view.registry.least_loaded_in(home, |_| false) {
            return s.summary();
        }
        tracing::info!(
            home,
            "home region has no eligible server; locking the login here"
        );
    }
    summary(&me.id, &me.public_url, &me.region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_login_fields() {
        let body = br#"{"user":{"id":"u-1","n":7},"home":null}"#;
        let hm = HeaderMap::new();
        assert_eq!(
            extract(&Source::JsonPointer("/user/id".into()), &hm, body),
            Some("u-1".into())
        );
        assert_eq!(
            extract(&Source::JsonPointer("/user/n".into()), &hm, body),
            Some("7".into())
        );
        assert_eq!(
            extract(&Source::JsonPointer("/home".into()), &hm, body),
            None
        );
        assert_eq!(
            extract(&Source::JsonPointer("/nope".into()), &hm, body),
            None
        );
        let mut hm = HeaderMap::new();
        hm.insert("x-user", "bob".parse().unwrap());
        assert_eq!(
            extract(&Source::Header("x-user".into()), &hm, b""),
            Some("bob".into())
        );
    }

    #[test]
    fn subjects_are_taken_exactly_or_refused() {
        let hm = HeaderMap::new();
        let at = |body: &str| extract(&Source::JsonPointer("/id".into()), &hm, body.as_bytes());
        assert_eq!(at(r#"{"id":"admin"}"#), Some("admin".into()));
        assert_eq!(at(r#"{"id":" admin "}"#), None);
        assert_eq!(at(r#"{"id":"admin\t"}"#), None);
        assert_eq!(at(r#"{"id":"a\u0062c"}"#), Some("abc".into()));
        assert_eq!(
            at(r#"{"id":18446744073709551616}"#),
            Some("18446744073709551616".into())
        );
        assert_eq!(
            at(r#"{"id":18446744073709551617}"#),
            Some("18446744073709551617".into())
        );
        assert_eq!(at(r#"{"id":-42}"#), Some("-42".into()));
        assert_eq!(at(r#"{"id":1e2}"#), None);
        assert_eq!(at(r#"{"id":100.0}"#), None);
        assert_eq!(at(r#"{"id":true}"#), None);
        assert_eq!(at(r#"{"id":{"a":1}}"#), None);
        let nested = r#"{"a/b":{"c~d":["x","y"]}}"#;
        assert_eq!(
            extract(
                &Source::JsonPointer("/a~1b/c~0d/1".into()),
                &hm,
                nested.as_bytes()
            ),
            Some("y".into())
        );
        let mut hm = HeaderMap::new();
        hm.insert("x-user", " bob".parse().unwrap());
        assert_eq!(extract(&Source::Header("x-user".into()), &hm, b""), None);
    }
}
