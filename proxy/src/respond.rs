//! Writing the proxy's own answers (JSON errors and reserved endpoints).

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tether_protocol::wire::ErrorBody;

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

/// `401 invalid_token` with the `WWW-Authenticate` challenge.
pub async fn invalid_token(session: &mut Session, detail: &str) -> pingora_error::Result<()> {
    let body = ErrorBody::new("invalid_token").detail(detail);
    error(
        session,
        401,
        &body,
        &[("www-authenticate", "Bearer error=\"invalid_token\"")],
    )
    .await
}

/// `503 upstream_unavailable`: this server's own upstream pool is down.
pub async fn upstream_unavailable(session: &mut Session) -> pingora_error::Result<()> {
    let body =
        ErrorBody::new("upstream_unavailable").detail("no healthy upstream behind this server");
    error(session, 503, &body, &[("retry-after", "30")]).await
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
