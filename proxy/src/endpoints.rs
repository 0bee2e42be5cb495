//! The proxy's reserved endpoints (DESIGN.md §4): `/auth/login`,
//! `/auth/refresh`, `/auth/logout`, `/closestToMe`, `/healthz`.
//!
//! These are answered by the proxy itself, off the hot path, so they may
//! allocate freely; bodies are bounded by `limits.reserved_body_bytes`.

use bytes::Bytes;
use http::HeaderMap;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tether_protocol::headers as h;
use tether_protocol::placement::{self, PlacementError};
use tether_protocol::validate::{parse_json, FieldError};
use tether_protocol::wire::{
    ClosestResponse, ErrorBody, LogoutRequest, RefreshRequest, RefreshResponse, ServerSummary,
};

use crate::config::Source;
use crate::respond;
use crate::tokens::LockTarget;
use crate::State;

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
    match ep {
        Endpoint::Login => login(state, session).await,
        Endpoint::Refresh => refresh(state, session).await,
        Endpoint::Logout => logout(state, session).await,
        Endpoint::Closest => closest(state, session).await,
        Endpoint::Health => health(state, session).await,
        Endpoint::Jwks => respond::json(session, 200, state.tokens.jwks_json(), &[]).await,
    }
}

/// Reads the whole request body, or `None` when it is over `limit`.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Vec<u8>>> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    session.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(declared.unwrap_or(512).min(limit));
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

async fn too_large(session: &mut Session, limit: usize) -> Result<()> {
    let body = ErrorBody {
        field: Some("body".into()),
        ..ErrorBody::new("payload_too_large")
            .detail(format!("the request body is over {limit} bytes"))
    };
    // The rest of an oversized body is not read: close the connection.
    session.set_keepalive(None);
    respond::error(session, 413, &body, &[]).await
}

async fn bad_field(session: &mut Session, err: &FieldError) -> Result<()> {
    respond::error(session, 400, &ErrorBody::invalid_field(err), &[]).await
}

fn summary(id: &str, url: &str, region: &str) -> ServerSummary {
    ServerSummary {
        id: id.to_owned(),
        url: url.to_owned(),
        region: region.to_owned(),
    }
}

// ------------------------------------------------------------------- login

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_tether_header(name: &str) -> bool {
    name.starts_with("tether-") || name.starts_with("x-tether-")
}

/// Request headers passed to the upstream login call.
fn forward_request_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || name == "host"
        || name == "content-length"
        || is_tether_header(name))
}

/// Upstream login-answer headers passed back to the client.
fn pass_response_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name) || name == "content-length" || is_tether_header(name))
}

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

async fn login(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit).await? else {
        state.metrics.logins.with_label_values(&["too_large"]).inc();
        return too_large(session, limit).await;
    };
    let Some(backend) = crate::upstream::select(&state.upstream) else {
        state
            .metrics
            .logins
            .with_label_values(&["upstream_unavailable"])
            .inc();
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
            state
                .metrics
                .logins
                .with_label_values(&["upstream_error"])
                .inc();
            let body = ErrorBody::new("upstream_error").detail("the upstream login call failed");
            return respond::error(session, 502, &body, &[]).await;
        }
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = match read_limited(answer, state.cfg.limits.login_answer_bytes).await {
        Some(b) => b,
        None => {
            state
                .metrics
                .logins
                .with_label_values(&["upstream_error"])
                .inc();
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
            state
                .metrics
                .logins
                .with_label_values(&["mapping_failed"])
                .inc();
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
        state.metrics.logins.with_label_values(&["ok"]).inc();
    } else {
        state.metrics.logins.with_label_values(&["rejected"]).inc();
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

// ----------------------------------------------------------------- refresh

async fn refresh(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit).await? else {
        state
            .metrics
            .refresh_rejected
            .with_label_values(&["too_large"])
            .inc();
        return too_large(session, limit).await;
    };
    let req: RefreshRequest =
        match parse_json(&body).and_then(|r: RefreshRequest| r.validate().map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                state
                    .metrics
                    .refresh_rejected
                    .with_label_values(&["bad_request"])
                    .inc();
                return bad_field(session, &e).await;
            }
        };
    let claims = match state.tokens.verify_refresh(&req.refresh_token) {
        Ok(c) if state.is_revoked(&c.fam) || state.registry.load().registry.is_revoked(&c.fam) => {
            state
                .metrics
                .refresh_rejected
                .with_label_values(&["revoked"])
                .inc();
            return respond::invalid_token(session, crate::tokens::TokenError::Revoked.detail())
                .await;
        }
        Ok(c) => c,
        Err(e) => {
            state
                .metrics
                .refresh_rejected
                .with_label_values(&["invalid_token"])
                .inc();
            return respond::invalid_token(session, e.detail()).await;
        }
    };
    let me = &state.cfg.server;
    let view = state.registry.load_full();

    // Fast failover: believe "unreachable" only after our own probe fails.
    // Only servers in the registry are probed, at their registry URL.
    // Servers found dead by recent probes stay excluded until discovery
    // catches up.
    let probe = req
        .unreachable_server_id
        .as_deref()
        .filter(|_| state.cfg.routing.fast_failover);
    if let Some(unreachable) = probe {
        if unreachable != me.id {
            if let Some(entry) = view.registry.get(unreachable).filter(|s| s.is_live()) {
                let alive = state.prober.is_alive(&entry.id, &entry.url).await;
                state
                    .metrics
                    .probes
                    .with_label_values(&[if alive { "alive" } else { "dead" }])
                    .inc();
            }
        }
    }
    let known_dead = if state.cfg.routing.fast_failover {
        state.prober.known_dead()
    } else {
        Vec::new()
    };
    let confirmed_dead: Vec<&str> = known_dead
        .iter()
        .map(String::as_str)
        .filter(|id| *id != me.id)
        .collect();

    let decision = placement::place(
        &view.registry,
        &placement::Request {
            current: &claims.srv,
            closest: req.closest_server_id.as_deref(),
            critical_task: req.critical_task_in_progress,
            home_region: claims.home.as_deref(),
            answering: &me.id,
            answering_region: &me.region,
            confirmed_dead: &confirmed_dead,
        },
        &state.cfg.routing.hysteresis,
    );
    let decision = match decision {
        Ok(d) => d,
        Err(PlacementError::NoServerAvailable) => {
            state
                .metrics
                .refresh_rejected
                .with_label_values(&["no_server"])
                .inc();
            let body = ErrorBody::new("no_server_available")
                .detail("no live server can take this client right now");
            return respond::error(session, 503, &body, &[("retry-after", "5")]).await;
        }
    };
    let mut target = decision.server.summary();
    let mut refresh_id = None;
    if state.cfg.tokens.refresh_rotation {
        match rotate(state, &claims, &target).await {
            Rotation::Issue { jti, iat, srv } => {
                if srv != target.id {
                    // A retry within the grace window: the successor issued
                    // first stands, with the placement it was issued for,
                    // unless that server has died since (then this
                    // placement; the token id, which rotation tracks, is
                    // the same either way).
                    if let Some(s) = view.registry.get(&srv).filter(|s| s.is_live()) {
                        target = s.summary();
                    }
                }
                refresh_id = Some((jti, iat));
            }
            Rotation::Reused => {
                state
                    .metrics
                    .refresh_rejected
                    .with_label_values(&["reused"])
                    .inc();
                state.revoke(&claims.fam, claims.exp);
                return respond::invalid_token(
                    session,
                    "refresh token reuse detected; the session is revoked",
                )
                .await;
            }
            Rotation::Unavailable => {
                state
                    .metrics
                    .refresh_rejected
                    .with_label_values(&["discovery_down"])
                    .inc();
                let body = ErrorBody::new("refresh_unavailable")
                    .detail("refresh-token reuse detection is unavailable right now; access tokens keep working, retry shortly");
                return respond::error(session, 503, &body, &[("retry-after", "5")]).await;
            }
            Rotation::Untracked => {}
        }
    }
    state.metrics.decision(decision.reason);
    let minted = match state.tokens.mint_with(
        &claims.sub,
        LockTarget {
            server_id: &target.id,
            region: &target.region,
        },
        claims.home.as_deref(),
        Some(&claims.fam),
        refresh_id.as_ref().map(|(j, i)| (j.as_str(), *i)),
    ) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("minting tokens failed: {e}");
            let body = ErrorBody::new("internal").detail("could not mint tokens");
            return respond::error(session, 500, &body, &[]).await;
        }
    };
    let answer = RefreshResponse {
        access_token: minted.access,
        refresh_token: minted.refresh,
        token_type: "Bearer".into(),
        expires_in: minted.expires_in,
        server_changed: target.id != claims.srv,
        server: target,
        previous_server_id: claims.srv.clone(),
        reason: decision.reason.as_str().into(),
    };
    let json = serde_json::to_vec(&answer).unwrap_or_default();
    respond::json(session, 200, json, &[]).await
}

/// A cluster-token call to discovery, bounded to 2 s: a refresh or logout
/// never waits long on it.
async fn discovery_post<T: serde::Serialize>(
    state: &State,
    path: &str,
    body: &T,
) -> reqwest::Result<reqwest::Response> {
    let d = &state.cfg.discovery;
    state
        .discovery_http
        .post(format!("{}{path}", d.url))
        .bearer_auth(&d.cluster_token)
        .timeout(std::time::Duration::from_secs(2))
        .json(body)
        .send()
        .await
}

/// What the family store said about a refresh.
enum Rotation {
    /// Issue the refresh token with this id and `iat`, locked to `srv`.
    Issue { jti: String, iat: u64, srv: String },
    /// The presented token was reused: the family is revoked.
    Reused,
    /// Discovery could not be asked and the policy is fail-closed.
    Unavailable,
    /// Discovery could not be asked and the policy is fail-open: rotate
    /// without tracking.
    Untracked,
}

/// The compare-and-set at discovery (DESIGN.md §3, RFC 9700 §4.14.2).
async fn rotate(
    state: &State,
    claims: &tether_protocol::claims::RefreshClaims,
    target: &ServerSummary,
) -> Rotation {
    use tether_protocol::wire::{RotateOutcome, RotateRequest, RotateResponse};
    let jti = crate::tokens::successor_jti(&state.successor_key, &claims.fam, &claims.jti);
    let now = crate::tokens::unix_now();
    let request = RotateRequest {
        family: claims.fam.clone(),
        presented: crate::tokens::sha256_hex(&claims.jti),
        successor: crate::tokens::sha256_hex(&jti),
        iat: now,
        srv: target.id.clone(),
        rgn: target.region.clone(),
        expires_at: now + state.cfg.tokens.refresh_ttl.as_secs(),
    };
    let answer = discovery_post(state, "/v1/families/rotate", &request).await;
    let parsed = match answer {
        Ok(r) if r.status().is_success() => r.json::<RotateResponse>().await.ok(),
        Ok(r) => {
            tracing::warn!(status = %r.status(), "discovery refused the refresh rotation");
            None
        }
        Err(e) => {
            tracing::warn!("refresh rotation at discovery failed: {e}");
            None
        }
    };
    match parsed {
        Some(RotateResponse {
            outcome: RotateOutcome::Revoked,
            ..
        }) => Rotation::Reused,
        Some(RotateResponse {
            iat: Some(iat),
            srv: Some(srv),
            ..
        }) => Rotation::Issue { jti, iat, srv },
        _ => match state.cfg.tokens.when_discovery_down {
            crate::config::DownPolicy::FailClosed => Rotation::Unavailable,
            crate::config::DownPolicy::FailOpen => Rotation::Untracked,
        },
    }
}

// ------------------------------------------------------------------ logout

async fn logout(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit).await? else {
        return too_large(session, limit).await;
    };
    let req: LogoutRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return bad_field(session, &e).await,
    };
    match state.tokens.verify_refresh(&req.refresh_token) {
        Ok(c) => {
            state.revoke(&c.fam, c.exp);
            // Tell discovery, so every proxy refuses the family.
            let revoke = tether_protocol::wire::RevokeRequest {
                family: c.fam.clone(),
                expires_at: c.exp,
            };
            let central = discovery_post(state, "/v1/families/revoke", &revoke)
                .await
                .is_ok_and(|r| r.status().is_success());
            if !central {
                tracing::warn!(
                    "logout: discovery did not take the revocation; only this proxy knows of it"
                );
            }
            let body = if central {
                &b"{\"revoked\":true}"[..]
            } else {
                &b"{\"revoked\":true,\"everywhere\":false}"[..]
            };
            respond::json(session, 200, body, &[]).await
        }
        Err(e) => respond::invalid_token(session, e.detail()).await,
    }
}

// ------------------------------------------------------- closest and health

async fn closest(state: &State, session: &mut Session) -> Result<()> {
    let me = &state.cfg.server;
    let view = state.registry.load();
    let draining = view.registry.get(&me.id).is_some_and(|s| s.draining);
    let pick = if !draining && state.upstream_healthy() {
        None
    } else {
        view.registry.least_loaded_in(&me.region, |s| s.id == me.id)
    };
    let answer = match pick {
        Some(s) => ClosestResponse {
            closest_server_id: s.id.clone(),
            region: s.region.clone(),
            url: s.url.clone(),
        },
        None => ClosestResponse {
            closest_server_id: me.id.clone(),
            region: me.region.clone(),
            url: me.public_url.clone(),
        },
    };
    drop(view);
    let json = serde_json::to_vec(&answer).unwrap_or_default();
    respond::json(session, 200, json, &[]).await
}

async fn health(state: &State, session: &mut Session) -> Result<()> {
    if state.upstream_healthy() {
        respond::json(session, 200, &b"{\"status\":\"ok\"}"[..], &[]).await
    } else {
        respond::json(
            session,
            503,
            &b"{\"status\":\"unavailable\",\"error\":\"upstream_unavailable\"}"[..],
            &[],
        )
        .await
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

    #[test]
    fn header_filters() {
        assert!(!forward_request_header("x-tether-subject"));
        assert!(!forward_request_header("connection"));
        assert!(forward_request_header("content-type"));
        assert!(!pass_response_header("tether-relock"));
        assert!(pass_response_header("set-cookie"));
    }

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
