//! HTTP/2 on the client listener (over TLS, by ALPN: see [`crate::tls`]).
//!
//! Pingora serves an `h2` connection with the `h2` crate and hands each
//! stream to the same `ProxyHttp` code as an HTTP/1.1 request, so the
//! path checks, the token and lock check and the header stripping are the
//! same code on both. What differs is the connection, set here:
//!
//! - the header block the codec accepts (`SETTINGS_MAX_HEADER_LIST_SIZE`)
//!   follows `[limits]`: the h2 size of a field is its name, its value and
//!   32 bytes, so a block the proxy's own limits accept (at most
//!   `max_request_headers` fields of `max_request_header_bytes` in all)
//!   always fits, and the proxy answers its own `431` above them, up to
//!   this bound, where the codec refuses the stream itself;
//! - at most [`MAX_CONCURRENT_STREAMS`] requests in flight per connection
//!   (Pingora's default, nginx's is 128);
//! - a connection with no stream open for `limits.h2_idle_timeout_ms`
//!   (60 s by default, as an idle HTTP/1.1 keep-alive connection in
//!   Pingora) is closed, so an idle client does not keep its connection
//!   slot (`guard`) for ever.
//!
//! - a request body read by the proxy itself (the `/auth/*` calls) waits
//!   at most `limits.body_read_timeout` for each piece, as over HTTP/1.1:
//!   Pingora sets no deadline on an h2 body read ([`next_body_chunk`]).
//!
//! - a proxied request body has no deadline of its own over h2 (Pingora
//!   0.9 reads h2 bodies without one): a client that stalls it leaves the
//!   upstream waiting until `upstream.read_timeout_ms`, and that timeout
//!   is answered `408` like the HTTP/1.1 one ([`stalled_body`]), not `504`.
//!
//! The request-head deadline (`guard::HeadDeadline`) covers the client
//! connection preface, which ends with a blank line like an HTTP/1.x head;
//! after it the deadline no longer applies (h2 frames are binary and the
//! proxy never writes an HTTP/1.x response head on that connection).

use std::time::Duration;

use bytes::Bytes;
use pingora_core::apps::HttpServerOptions;
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

/// Requests in flight per HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The `h2` codec settings for the client listener, from
/// `limits.max_request_headers` and `limits.max_request_header_bytes`.
/// (Numbers, not `config::Limits`: `idempotency` and `endpoints` read
/// bodies through this module, and `config` stands above `idempotency`.)
pub fn options(max_headers: usize, max_header_bytes: usize) -> H2Options {
    let mut o = H2Options::default();
    o.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    o.max_header_list_size(header_list_bound(max_headers, max_header_bytes));
    o
}

/// Pingora's server options for the client listener: the h2 idle close
/// after `idle` (`limits.h2_idle_timeout_ms`).
pub fn server_options(idle: Duration) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.h2_idle_timeout = Some(idle);
    o
}

/// The next piece of the request body, or a downstream `ReadTimedout`
/// (answered `408`) when none comes within `wait`. HTTP/1.1 reads carry
/// the same deadline already (set per request); over h2 this is the only
/// one.
pub async fn next_body_chunk(
    session: &mut Session,
    wait: Duration,
) -> pingora_error::Result<Option<Bytes>> {
    match tokio::time::timeout(wait, session.read_request_body()).await {
        Ok(read) => read,
        Err(_) => {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                format!("no request body within {} ms", wait.as_millis()),
            );
            e.esource = ErrorSource::Downstream;
            Err(e)
        }
    }
}

/// True when an upstream timeout is an h2 client's stalled body: the
/// request body is not finished, so the upstream was still waiting for
/// it. (Over HTTP/1.1 the body read times out first, on the client side.)
pub fn stalled_body(session: &mut Session, e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    ) && session.is_http2()
        && !session.is_body_done()
}

/// `SETTINGS_MAX_HEADER_LIST_SIZE`: what `[limits]` lets through, plus the
/// 32 bytes h2 counts for each field (and as many again for the pseudo
/// headers), so the proxy's own `431` is what a client over the limits
/// sees first.
fn header_list_bound(max_fields: usize, max_bytes: usize) -> u32 {
    let fields = max_fields.saturating_add(8);
    let bytes = max_bytes
        .saturating_add(fields.saturating_mul(32))
        .saturating_add(64 * 1024);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_bound_is_above_what_the_limits_accept() {
        let bound = header_list_bound(100, 16 * 1024) as usize;
        assert!(bound >= 16 * 1024 + 32 * 108);
        assert_eq!(header_list_bound(256, usize::MAX / 2), u32::MAX);
    }
}
