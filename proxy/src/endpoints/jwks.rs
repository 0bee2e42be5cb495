//! `GET /.well-known/jwks.json`: the current key ring's Ed25519 public
//! keys. Cacheable for a short while (verifiers poll it), with an `ETag`
//! so a poll of an unchanged ring is a `304` without a body; a key reload
//! changes the body and so the tag.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::Result;
use crate::state::State;

/// How long a verifier may cache the key set, seconds: short, since a
/// rotation adds a key here before tokens signed with it appear.
pub const JWKS_MAX_AGE_SECONDS: u64 = 300;

pub(super) async fn jwks(state: &State, session: &mut Session) -> Result<()> {
    let body = state.tokens.jwks_json();
    let tag = format!("\"{}\"", &crate::tokens::sha256_hex(&body)[..32]);
    let unchanged = session
        .req_header()
        .headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == tag || t.strip_prefix("W/") == Some(tag.as_str())
        });
    let status = if unchanged { 304 } else { 200 };
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("etag", tag.as_str())?;
    resp.insert_header(
        "cache-control",
        format!("public, max-age={JWKS_MAX_AGE_SECONDS}"),
    )?;
    if unchanged {
        session.write_response_header(Box::new(resp), true).await
    } else {
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}
