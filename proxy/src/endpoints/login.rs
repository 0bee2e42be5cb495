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
use crate::headers::{forward_request_header, pass_response_header};
use crate::metrics::Login;
use crate::respond;
use crate::state::State;
use crate::tokens::LockTarget;

/// Pulls a login field from the upstream's answer. `Ok(None)` = absent or
/// JSON null; strings are taken as they are, numbers in their JSON form.
fn extract(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    parsed: &mut Option<serde_json::Value>,
) -> Option<String> {
    match source {
        Source::Header(name) => headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        Source::JsonPointer(ptr) => {
            if parsed.is_none() {
                *parsed = serde_json::from_slice(body).ok();
            }
            match parsed.as_ref()?.pointer(ptr)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }
    }
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

pub(super) async fn login(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit).await? else {
        state.metrics.login(Login::TooLarge);
        return too_large(session, limit).await;
    };
    let Some(backend) = crate::upstream::select(&state.upstream) else {
        state.metrics.login(Login::UpstreamUnavailable);
        return respond::upstream_unavailable(session).await;
    };
    let url = format!("http://{}{}", backend.addr, state.cfg.login.upstream_path);
    let mut call = state.upstream_http.post(&url).body(body);
    for (name, value) in session.req_header().headers.iter() {
        if forward_request_header(name.as_str()) {
            call = call.header(name, value);
        }
    }
    if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
        call = call.header("x-forwarded-for", addr.ip().to_string());
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
        let mut parsed = None;
        let subject = extract(&state.cfg.login.subject, &headers, &bytes, &mut parsed)
            .filter(|s| valid_subject(s));
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
            .and_then(|src| extract(src, &headers, &bytes, &mut parsed))
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
/// one there.
fn login_target(state: &State, home: Option<&str>) -> ServerSummary {
    let me = &state.cfg.server;
    if let Some(home) = home.filter(|r| *r != me.region) {
        let view = state.registry.load();
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
        let mut p = None;
        assert_eq!(
            extract(&Source::JsonPointer("/user/id".into()), &hm, body, &mut p),
            Some("u-1".into())
        );
        assert_eq!(
            extract(&Source::JsonPointer("/user/n".into()), &hm, body, &mut p),
            Some("7".into())
        );
        assert_eq!(
            extract(&Source::JsonPointer("/home".into()), &hm, body, &mut p),
            None
        );
        assert_eq!(
            extract(&Source::JsonPointer("/nope".into()), &hm, body, &mut p),
            None
        );
        let mut hm = HeaderMap::new();
        hm.insert("x-user", "bob".parse().unwrap());
        assert_eq!(
            extract(&Source::Header("x-user".into()), &hm, b"", &mut None),
            Some("bob".into())
        );
    }
}
