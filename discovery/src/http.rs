//! The HTTP surface of docs/design.md §6: routes, request checks, and the
//! mapping of every outcome to a status and a JSON body.
//!
//! Handlers take raw bytes and headers rather than axum's `Json` and
//! `TypedHeader` extractors, so that every client mistake gets the
//! contract's JSON error naming the field (axum's own rejections are plain
//! text), and so that a wrong `Content-Type` does not matter.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tether_protocol::validate::{self, FieldError};
use tether_protocol::wire::{ErrorBody, Heartbeat, HeartbeatAck};
use tokio::time::Instant;

use crate::auth::bearer_matches;
use crate::metrics::{HeartbeatOutcome, WaiterGuard};
use crate::registry::HeartbeatRejected;
use crate::store::{HeartbeatError, StoreError};
use crate::App;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/servers", get(servers))
        .route("/v1/servers/{id}/drain", post(drain).delete(undrain))
        .route("/v1/families/rotate", post(rotate_family))
        .route("/v1/families/revoke", post(revoke_family))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, JSON),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, body: &ErrorBody) -> Response {
    json(status, body.to_json().into_bytes())
}

/// 503 when the store cannot answer (etcd without quorum, unreachable, or
/// this node not in sync yet). Proxies keep their last good snapshot and
/// try again, or another discovery node.
fn unavailable(err: &StoreError) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        &ErrorBody::new("store_unavailable").detail(format!(
            "discovery's store cannot answer right now: {err}; keep the last good snapshot and retry (or another discovery node)"
        )),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn invalid(err: &FieldError) -> Response {
    error(StatusCode::BAD_REQUEST, &ErrorBody::invalid_field(err))
}

fn unauthorized(what: &str) -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        &ErrorBody::new("unauthorized").detail(format!(
            "missing or wrong bearer token: this endpoint takes the {what}"
        )),
    );
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn heartbeat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let (outcome, response) = heartbeat_inner(&app, &headers, body).await;
    app.metrics.heartbeat(outcome);
    response
}

async fn heartbeat_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> (HeartbeatOutcome, Response) {
    if !bearer_matches(headers, &app.config.cluster_token) {
        return (
            HeartbeatOutcome::Unauthorized,
            unauthorized("cluster token"),
        );
    }
    let bytes = match read_body(body, headers, app.config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let err = FieldError::new(
                "body",
                format!(
                    "is larger than {} bytes, the most this service accepts",
                    app.config.max_body_bytes
                ),
            );
            let body = ErrorBody {
                field: Some(err.field.clone()),
                ..ErrorBody::new("payload_too_large").detail(err.to_string())
            };
            return (
                HeartbeatOutcome::TooLarge,
                error(StatusCode::PAYLOAD_TOO_LARGE, &body),
            );
        }
        Err(BodyError::Unreadable(e)) => {
            return (
                HeartbeatOutcome::BadRequest,
                invalid(&FieldError::new("body", format!("could not be read: {e}"))),
            );
        }
    };
    let hb = match parse_heartbeat(&bytes) {
        Ok(hb) => hb,
        Err(e) => return (HeartbeatOutcome::BadRequest, invalid(&e)),
    };
    match app.store.heartbeat(hb, Instant::now()).await {
        Ok(version) => {
            let ack = HeartbeatAck {
                ttl_ms: u64::try_from(app.store.ttl().as_millis()).unwrap_or(u64::MAX),
                registry_version: version,
            };
            // Two integers: serialisation cannot fail.
            let body = serde_json::to_vec(&ack).expect("serialising a heartbeat ack");
            (HeartbeatOutcome::Accepted, json(StatusCode::OK, body))
        }
        Err(HeartbeatError::Unavailable(e)) => (HeartbeatOutcome::Unavailable, unavailable(&e)),
        Err(HeartbeatError::Rejected(HeartbeatRejected::IdConflict { id, url })) => {
            let body = ErrorBody {
                field: Some("id".to_owned()),
                ..ErrorBody::new("id_conflict").detail(format!(
                    "server id {id:?} is held by a live server at {url}; the id frees up {} ms after that server's last heartbeat",
                    app.store.ttl().as_millis()
                ))
            };
            (
                HeartbeatOutcome::Conflict,
                error(StatusCode::CONFLICT, &body),
            )
        }
    }
}

/// Reads a small JSON body with the cluster token checked first; the
/// error answer when anything is wrong.
async fn family_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    admin_too: bool,
) -> Result<T, Response> {
    let authorized = bearer_matches(headers, &app.config.cluster_token)
        || (admin_too && bearer_matches(headers, &app.config.admin_token));
    if !authorized {
        return Err(unauthorized(if admin_too {
            "cluster or admin token"
        } else {
            "cluster token"
        }));
    }
    let bytes = match read_body(body, headers, app.config.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let body = ErrorBody {
                field: Some("body".into()),
                ..ErrorBody::new("payload_too_large").detail(format!(
                    "is larger than {} bytes",
                    app.config.max_body_bytes
                ))
            };
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &body));
        }
        Err(BodyError::Unreadable(e)) => {
            return Err(invalid(&FieldError::new(
                "body",
                format!("could not be read: {e}"),
            )))
        }
    };
    validate::parse_json::<T>(&bytes).map_err(|e| invalid(&e))
}

/// `POST /v1/families/rotate`: the refresh-token compare-and-set.
async fn rotate_family(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let req: tether_protocol::wire::RotateRequest =
        match family_body(&app, &headers, body, false).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
    if let Err(e) = req.validate() {
        return invalid(&e);
    }
    let answer = match app.store.rotate(&req, Instant::now(), &app.metrics).await {
        Ok(a) => a,
        Err(e) => return unavailable(&e),
    };
    app.metrics.family_rotation(answer.outcome);
    // Plain strings and integers: serialisation cannot fail.
    json(
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
}

/// `POST /v1/families/revoke` (logout at a proxy, or an operator).
async fn revoke_family(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let req: tether_protocol::wire::RevokeRequest =
        match family_body(&app, &headers, body, true).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
    if let Err(e) = req.validate() {
        return invalid(&e);
    }
    if let Err(e) = app
        .store
        .revoke(&req.family, req.expires_at, &app.metrics)
        .await
    {
        return unavailable(&e);
    }
    app.metrics
        .family_rotation(tether_protocol::wire::RotateOutcome::Revoked);
    json(StatusCode::OK, b"{\"revoked\":true}".to_vec())
}

fn parse_heartbeat(bytes: &[u8]) -> Result<Heartbeat, FieldError> {
    let hb = validate::parse_json::<Heartbeat>(bytes).map_err(|e| blame_field(bytes, e))?;
    hb.validate()?;
    Ok(hb)
}

/// `parse_json` blames every JSON syntax error on `body`. serde_json counts
/// a number too large for an f64 (`"load": 1e999`) as a syntax error, yet
/// the mistake is in one field, so when the parser stopped inside a named
/// field, that field is what the client is told about.
fn blame_field(bytes: &[u8], err: FieldError) -> FieldError {
    if err.field != "body" {
        return err;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, Heartbeat>(&mut de) {
        Err(e) if e.inner().is_syntax() => {
            let path = e.path().to_string();
            let named =
                !path.is_empty() && path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if named {
                FieldError::new(path, err.message)
            } else {
                err
            }
        }
        _ => err,
    }
}

enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads at most `max` bytes, refusing early on a `Content-Length` over
/// the limit so a large body is never buffered.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<bytes::Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e.to_string())),
    }
}

async fn servers(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let wait = match parse_wait(query.as_deref(), app.config.max_wait) {
        Ok(w) => w,
        Err(e) => return invalid(&e),
    };
    let since = match parse_since(query.as_deref()) {
        Ok(s) => s,
        Err(e) => return invalid(&e),
    };
    let now = Instant::now();
    if let Some(remaining) = app.warmup_remaining(now) {
        app.metrics.snapshot(503);
        let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &ErrorBody::new("warming_up").detail(
                "discovery started recently and is still collecting heartbeats; keep the last good snapshot and retry",
            ),
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return r;
    }
    let current = match app.store.current_version(now) {
        Ok(v) => v,
        Err(e) => {
            app.metrics.snapshot(503);
            return unavailable(&e);
        }
    };
    let matches = headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| etag_matches(v.as_bytes(), current));
    // With `since` at the current version, the caller already holds
    // everything: a long-poll waits as it does for a matching ETag.
    if matches || since == Some(current) {
        let changed = match wait {
            Some(wait) if !wait.is_zero() => wait_for_change(&app, current, wait).await,
            _ => false,
        };
        if !changed && matches {
            app.metrics.snapshot(304);
            // The same Cache-Control as the 200 (RFC 9110 §15.4.5).
            return (
                StatusCode::NOT_MODIFIED,
                [
                    (ETAG, etag(current)),
                    (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response();
        }
    }
    let answer = match since {
        None => app
            .store
            .listing(Instant::now())
            .map(|l| (l.version, l.body)),
        Some(since) => app.store.delta(since, Instant::now()).map(|d| {
            // Strings, numbers and bools: serialisation cannot fail.
            let body = serde_json::to_vec(&d).expect("serialising a delta");
            (d.version, body)
        }),
    };
    let (version, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            app.metrics.snapshot(503);
            return unavailable(&e);
        }
    };
    app.metrics.snapshot(200);
    let mut r = json(StatusCode::OK, body);
    r.headers_mut().insert(ETAG, etag(version));
    r
}

/// Holds a long-poll until the version moves off `seen` (true), or the wait
/// elapses or the service shuts down (false).
async fn wait_for_change(app: &App, seen: u64, wait: Duration) -> bool {
    let _waiting = WaiterGuard::new(&app.metrics.longpoll_waiters);
    let mut rx = app.store.subscribe();
    let mut shutdown = app.shutdown.clone();
    let changed = async move {
        loop {
            // Checked before the first wait too: a change between the
            // caller's version check and `subscribe` is caught here.
            if *rx.borrow_and_update() != seen {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::select! {
        changed = changed => changed,
        () = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// `?since=V`: a registry version the caller holds (an unsigned integer).
fn parse_since(query: Option<&str>) -> Result<Option<u64>, FieldError> {
    let Some(query) = query else { return Ok(None) };
    let mut since = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "since" {
            continue;
        }
        let v = value.parse::<u64>().map_err(|_| {
            FieldError::new(
                "since",
                format!("{value:?} is not allowed: since is a registry version (an unsigned integer from an earlier answer)"),
            )
        })?;
        since = Some(v);
    }
    Ok(since)
}

/// `?wait=N`: whole seconds, `0..=max`. Other parameters are ignored.
fn parse_wait(query: Option<&str>, max: Duration) -> Result<Option<Duration>, FieldError> {
    let Some(query) = query else { return Ok(None) };
    let mut wait = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "wait" {
            continue;
        }
        let secs = value
            .parse::<u64>()
            .ok()
            .filter(|&s| s <= max.as_secs())
            .ok_or_else(|| {
                FieldError::new(
                    "wait",
                    format!(
                        "{value:?} is not allowed: wait is a whole number of seconds, 0 to {}",
                        max.as_secs()
                    ),
                )
            })?;
        wait = Some(Duration::from_secs(secs));
    }
    Ok(wait)
}

fn etag(version: u64) -> HeaderValue {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(version);
    let mut v = Vec::with_capacity(digits.len() + 2);
    v.push(b'"');
    v.extend_from_slice(digits.as_bytes());
    v.push(b'"');
    // Digits between quotes are always a valid header value.
    HeaderValue::from_bytes(&v).expect("a quoted number is a valid header value")
}

/// `If-None-Match` against `"<version>"`: a list of tags, weak or strong
/// (weak comparison, as RFC 9110 prescribes for `If-None-Match`), or `*`.
fn etag_matches(header: &[u8], version: u64) -> bool {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(version).as_bytes();
    header.split(|&b| b == b',').any(|tag| {
        let tag = tag.trim_ascii();
        let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
        tag == b"*" || tag.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) == Some(digits)
    })
}

async fn drain(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    set_drain(&app, &headers, id, true).await
}

async fn undrain(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    set_drain(&app, &headers, id, false).await
}

async fn set_drain(
    app: &App,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    drain: bool,
) -> Response {
    if !bearer_matches(headers, &app.config.admin_token) {
        return unauthorized("admin token");
    }
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return invalid(&FieldError::new("id", e.body_text())),
    };
    if let Err(e) = validate::server_id("id", &id) {
        return invalid(&e);
    }
    match app.store.set_admin_drain(&id, drain, Instant::now()).await {
        Err(e) => unavailable(&e),
        Ok(Some(entry)) => {
            tracing::info!(server = %id, drain, "admin drain changed");
            // Strings, numbers and bools: serialisation cannot fail.
            json(
                StatusCode::OK,
                serde_json::to_vec(&entry).expect("serialising a server entry"),
            )
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &ErrorBody::new("unknown_server").detail(format!("no live server has the id {id:?}")),
        ),
    }
}

async fn healthz() -> Response {
    json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &ErrorBody::new("internal").detail("metrics could not be encoded"),
            )
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &ErrorBody::new("not_found").detail(format!("no route for {method} {}", uri.path())),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        &ErrorBody::new("method_not_allowed")
            .detail(format!("{} does not take {method}", uri.path())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parameter() {
        let max = Duration::from_secs(30);
        assert_eq!(parse_wait(None, max), Ok(None));
        assert_eq!(parse_wait(Some("x=1"), max), Ok(None));
        assert_eq!(parse_wait(Some("wait=0"), max), Ok(Some(Duration::ZERO)));
        assert_eq!(parse_wait(Some("a=b&wait=30"), max), Ok(Some(max)));
        for bad in [
            "wait=31", "wait=-1", "wait=", "wait", "wait=1.5", "wait=abc",
        ] {
            assert_eq!(
                parse_wait(Some(bad), max).unwrap_err().field,
                "wait",
                "{bad}"
            );
        }
    }

    #[test]
    fn heartbeat_syntax_errors_name_the_field_when_there_is_one() {
        let good = r#""region":"eu","url":"http://h","healthy":true"#;
        let field = |body: String| parse_heartbeat(body.as_bytes()).unwrap_err().field;
        assert_eq!(
            field(format!(r#"{{"id":"a","load":1e999,{good}}}"#)),
            "load"
        );
        assert_eq!(
            field(format!(r#"{{"id":"a","load":-1e999,{good}}}"#)),
            "load"
        );
        assert_eq!(field(format!(r#"{{"id":"a","load":1x,{good}}}"#)), "body");
        assert_eq!(field("{not json".into()), "body");
        assert_eq!(field("[1e999]".into()), "body");
        assert_eq!(field(format!(r#"{{"id":"a","load":1,{good}}} x"#)), "body");
        assert_eq!(field(r#"{"id":"a","lo"#.into()), "body");
    }

    #[test]
    fn etags() {
        assert_eq!(etag(42), "\"42\"");
        assert!(etag_matches(b"\"42\"", 42));
        assert!(etag_matches(b"W/\"42\"", 42));
        assert!(etag_matches(b"\"1\", \"42\"", 42));
        assert!(etag_matches(b"*", 42));
        assert!(!etag_matches(b"\"43\"", 42));
        assert!(!etag_matches(b"42", 42));
        assert!(!etag_matches(b"", 42));
    }
}
