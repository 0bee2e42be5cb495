//! The proxy's reserved endpoints (docs/design.md §4), answered by the proxy
//! itself, one file each:
//!
//! - `login`: `POST /auth/login`, the upstream's login call, and the
//!   first lock;
//! - `refresh`: `POST /auth/refresh`, where a client is placed again
//!   (the policy is `tether_protocol::placement`) and its refresh token
//!   rotated at discovery;
//! - `logout`: `POST /auth/logout`, revoking a refresh family;
//! - `closest`: `GET /closestToMe`;
//! - `health`: `GET /healthz`;
//! - `jwks`: `GET /.well-known/jwks.json`.
//!
//! These are off the hot path, so they may allocate freely; bodies are
//! bounded by `limits.reserved_body_bytes`.

mod closest;
mod health;
mod jwks;
mod login;
mod logout;
mod refresh;

use pingora_proxy::Session;
use tether_protocol::validate::FieldError;
use tether_protocol::wire::{ErrorBody, ServerSummary};

use crate::respond;
use crate::state::State;

type Result<T> = pingora_error::Result<T>;

/// A reserved path, recognised by exact match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Refresh,
    Logout,
    Closest,
    Health,
    Jwks,
}

pub fn reserved(path: &str) -> Option<Endpoint> {
    match path {
        "/auth/login" => Some(Endpoint::Login),
        "/auth/refresh" => Some(Endpoint::Refresh),
        "/auth/logout" => Some(Endpoint::Logout),
        "/closestToMe" => Some(Endpoint::Closest),
        "/healthz" => Some(Endpoint::Health),
        "/.well-known/jwks.json" => Some(Endpoint::Jwks),
        _ => None,
    }
}

pub async fn handle(ep: Endpoint, state: &State, session: &mut Session) -> Result<()> {
    let method = session.req_header().method.clone();
    let allowed = match ep {
        Endpoint::Login | Endpoint::Refresh | Endpoint::Logout => method == http::Method::POST,
        Endpoint::Closest | Endpoint::Health | Endpoint::Jwks => {
            method == http::Method::GET || method == http::Method::HEAD
        }
    };
    if !allowed {
        let allow = if matches!(ep, Endpoint::Closest | Endpoint::Health | Endpoint::Jwks) {
            "GET, HEAD"
        } else {
            "POST"
        };
        let body = ErrorBody::new("method_not_allowed")
            .detail(format!("{method} is not allowed here; use {allow}"));
        return respond::error(session, 405, &body, &[("allow", allow)]).await;
    }
    let answered = match ep {
        Endpoint::Login => login::login(state, session).await,
        Endpoint::Refresh => refresh::refresh(state, session).await,
        Endpoint::Logout => logout::logout(state, session).await,
        Endpoint::Closest => closest::closest(state, session).await,
        Endpoint::Health => health::health(state, session).await,
        Endpoint::Jwks => jwks::jwks(state, session).await,
    };
    match answered {
        // A client that stalled its body (limits.body_read_timeout_ms):
        // its slowness is a 408, never a 5xx.
        Err(e)
            if *e.etype() == pingora_error::ErrorType::ReadTimedout
                && session.response_written().is_none() =>
        {
            respond::request_timeout(session).await
        }
        other => other,
    }
}

/// Reads the whole request body, or `None` when it is over `limit`; each
/// piece within `wait` (`limits.body_read_timeout`), over HTTP/2 too.
pub(super) async fn read_body(
    session: &mut Session,
    limit: usize,
    wait: std::time::Duration,
) -> Result<Option<Vec<u8>>> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(512).min(limit));
    while let Some(chunk) = crate::http2::next_body_chunk(session, wait).await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

pub(super) async fn too_large(session: &mut Session, limit: usize) -> Result<()> {
    let body = ErrorBody {
        field: Some("body".into()),
        ..ErrorBody::new("payload_too_large")
            .detail(format!("the request body is over {limit} bytes"))
    };
    // The rest of an oversized body is not read: close the connection.
    session.set_keepalive(None);
    respond::error(session, 413, &body, &[]).await
}

pub(super) async fn bad_field(session: &mut Session, err: &FieldError) -> Result<()> {
    respond::error(session, 400, &ErrorBody::invalid_field(err), &[]).await
}

pub(super) fn summary(id: &str, url: &str, region: &str) -> ServerSummary {
    ServerSummary {
        id: id.to_owned(),
        url: url.to_owned(),
        region: region.to_owned(),
    }
}

/// A cluster-token call to discovery, bounded to 2 s per node: a refresh
/// or logout never waits long on it. A node that fails
/// ([`crate::discovery_nodes::node_failed`]) is left for the next one, each node tried
/// once; the last failure is returned when none answers.
pub(super) async fn discovery_post<T: serde::Serialize>(
    state: &State,
    path: &str,
    body: &T,
) -> reqwest::Result<reqwest::Response> {
    let d = &state.cfg.discovery;
    let nodes = &state.discovery;
    let mut tries = nodes.len().max(1);
    loop {
        let (node, base) = nodes.current();
        let result = state
            .discovery_http
            .post(format!("{base}{path}"))
            .bearer_auth(&d.cluster_token)
            .timeout(std::time::Duration::from_secs(2))
            .json(body)
            .send()
            .await;
        match crate::discovery_nodes::node_failed(&result) {
            None => {
                nodes.answered();
                return result;
            }
            Some(why) => nodes.failed(node, &why),
        }
        tries -= 1;
        if tries == 0 {
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_paths_are_exact() {
        assert_eq!(reserved("/auth/login"), Some(Endpoint::Login));
        assert_eq!(reserved("/closestToMe"), Some(Endpoint::Closest));
        assert_eq!(reserved("/auth/login/x"), None);
        assert_eq!(reserved("/healthz/"), None);
    }
}
