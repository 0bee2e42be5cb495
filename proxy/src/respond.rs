//! Writing the proxy's own answers (JSON errors and reserved endpoints):
//! every refusal the request path makes has its function here.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tether_protocol::wire::{ErrorBody, ServerSummary};

use crate::hop::HopError;

/// Writes a complete JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: impl Into<Bytes>,
    headers: &[(&'static str, &str)],
) -> pingora_error::Result<()> {
    let body = body.into();
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, *value)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

pub async fn error(
    session: &mut Session,
    status: u16,
    body: &ErrorBody,
    headers: &[(&'static str, &str)],
) -> pingora_error::Result<()> {
    json(session, status, body.to_json(), headers).await
}

/// `401 invalid_token` with the `WWW-Authenticate` challenge. A request
/// with no bearer credentials at all gets the bare `Bearer` challenge
/// (RFC 6750 §3.1: no error code when no credentials were sent).
pub async fn invalid_token(
    session: &mut Session,
    detail: &str,
    no_credentials: bool,
) -> pingora_error::Result<()> {
    let body = ErrorBody::new("invalid_token").detail(detail);
    let challenge = if no_credentials {
        "Bearer"
    } else {
        "Bearer error=\"invalid_token\""
    };
    error(session, 401, &body, &[("www-authenticate", challenge)]).await
}

/// `408 request_timeout`: the client stalled its request body; the
/// connection is closed.
pub async fn request_timeout(session: &mut Session) -> pingora_error::Result<()> {
    let body = ErrorBody::new("request_timeout")
        .detail("the request body did not arrive in time (limits.body_read_timeout_ms)");
    session.set_keepalive(None);
    error(session, 408, &body, &[("connection", "close")]).await
}

/// `400` for a request the proxy will not interpret (framing, path): the
/// connection is closed, since what follows on it cannot be trusted.
pub async fn bad_request(
    session: &mut Session,
    error_code: &'static str,
    detail: &'static str,
) -> pingora_error::Result<()> {
    let body = ErrorBody::new(error_code).detail(detail);
    session.set_keepalive(None);
    error(session, 400, &body, &[]).await
}

/// `503 upstream_unavailable`: this server's own upstream pool is down.
/// `Retry-After: 5`: a few health-check intervals, time for an upstream to
/// come back.
pub async fn upstream_unavailable(session: &mut Session) -> pingora_error::Result<()> {
    let body =
        ErrorBody::new("upstream_unavailable").detail("no healthy upstream behind this server");
    error(session, 503, &body, &[("retry-after", "5")]).await
}

/// `502 bad_gateway`: the upstream's answer was bad or cut before it
/// started; `504 upstream_timeout`: it did not answer in time. The
/// connection to the client stays usable.
pub async fn upstream_failed(
    session: &mut Session,
    failure: crate::retry::Failure,
) -> pingora_error::Result<()> {
    use crate::retry::Failure;
    match failure {
        Failure::Unavailable => upstream_unavailable(session).await,
        Failure::Timeout => {
            let body =
                ErrorBody::new("upstream_timeout").detail("the upstream did not answer in time");
            error(session, 504, &body, &[("retry-after", "1")]).await
        }
        Failure::BadAnswer => {
            let body = ErrorBody::new("bad_gateway")
                .detail("the upstream's answer was invalid or cut off");
            error(session, 502, &body, &[("retry-after", "1")]).await
        }
    }
}

/// `503 server_unavailable` + `Tether-Relock: refresh`.
pub async fn server_unavailable(session: &mut Session) -> pingora_error::Result<()> {
    let body = ErrorBody {
        action: Some("refresh".into()),
        ..ErrorBody::new("server_unavailable")
            .detail("the locked server is not available; refresh to get a new lock")
    };
    error(
        session,
        503,
        &body,
        &[
            (
                tether_protocol::headers::RELOCK,
                tether_protocol::headers::RELOCK_REFRESH,
            ),
            ("retry-after", "0"),
        ],
    )
    .await
}

/// `431 request_header_fields_too_large`; the connection is closed.
pub async fn headers_too_large(
    session: &mut Session,
    max_fields: usize,
    max_bytes: usize,
) -> pingora_error::Result<()> {
    let body = ErrorBody::new("request_header_fields_too_large").detail(format!(
        "request headers are limited to {max_fields} fields and {max_bytes} bytes"
    ));
    session.set_keepalive(None);
    error(session, 431, &body, &[]).await
}

/// `403 invalid_hop`: a hop marker that does not verify.
pub async fn invalid_hop(session: &mut Session, e: HopError) -> pingora_error::Result<()> {
    let body = ErrorBody::new("invalid_hop").detail(e.to_string());
    error(session, 403, &body, &[]).await
}

/// `421 wrong_server` + `Tether-Relock: <url>`: the client is locked to
/// `locked`.
pub async fn relock(session: &mut Session, locked: ServerSummary) -> pingora_error::Result<()> {
    let url = locked.url.clone();
    let body = ErrorBody {
        locked_server: Some(locked),
        ..ErrorBody::new("wrong_server")
    };
    error(
        session,
        421,
        &body,
        &[(tether_protocol::headers::RELOCK, &url)],
    )
    .await
}

/// `508 forward_loop`: the request already made its one hop.
pub async fn forward_loop(session: &mut Session) -> pingora_error::Result<()> {
    let body = ErrorBody::new("forward_loop").detail("this request was already forwarded once");
    error(session, 508, &body, &[]).await
}
