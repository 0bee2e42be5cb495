//! Headers the proxy reads, writes and strips: the bearer token, the
//! header limits, `X-Forwarded-*` / `Forwarded`, the internal `Tether-*`
//! and `X-Tether-*` headers, and the hop-by-hop headers of the login call.

use std::net::IpAddr;

use http::HeaderValue;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use crate::config::Limits;
use crate::tokens::TokenError;

/// The bearer token of the `Authorization` header.
pub fn bearer(session: &Session) -> Result<&str, TokenError> {
    let mut all = session.req_header().headers.get_all("authorization").iter();
    let value = all.next().ok_or(TokenError::Missing)?;
    // Two Authorization headers: ambiguous, refused (a proxy in front and
    // the app behind could each read a different one).
    if all.next().is_some() {
        return Err(TokenError::Malformed);
    }
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    Ok(token.trim())
}

/// Removes client-supplied `Tether-*` and `X-Tether-*` headers from a
/// request before it goes upstream: internal headers never reach the app
/// from outside. The common case (none present) costs one scan of the
/// header names and no allocation.
pub fn strip_internal_request_headers(req: &mut RequestHeader) {
    while let Some(name) = req
        .headers
        .keys()
        .find(|k| is_tether_header(k.as_str()))
        .cloned()
    {
        req.remove_header(&name);
    }
}

/// Removes `Tether-*` headers from the local app's response: the app must
/// not be able to speak the lock protocol to clients.
pub fn strip_lock_response_headers(resp: &mut ResponseHeader) {
    while let Some(name) = resp
        .headers
        .keys()
        .find(|k| k.as_str().starts_with("tether-"))
        .cloned()
    {
        resp.remove_header(&name);
    }
}

/// Whether a request's headers exceed the configured count or total size.
pub fn over_limits(req: &RequestHeader, limits: &Limits) -> bool {
    if req.headers.len() > limits.max_request_headers {
        return true;
    }
    let mut bytes = 0;
    for (name, value) in req.headers.iter() {
        bytes += name.as_str().len() + value.len() + 4;
    }
    bytes > limits.max_request_header_bytes
}

/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) for
/// the upstream: the client's address is appended to what a trusted peer
/// (a load balancer in `routing.trusted_proxies`) sent, and replaces
/// whatever anyone else sent, so a client cannot forge its address.
/// Proxy-only hop-by-hop headers are dropped too. The protocol is
/// `https` when the client's connection is TLS, else `http`.
///
/// On every proxied request, so the values are assembled without
/// `format!`: see [`forwarded_values`].
pub fn set_forwarded(
    session: &Session,
    upstream: &mut RequestHeader,
    trusted: &[ipnet::IpNet],
) -> pingora_error::Result<()> {
    for name in ["proxy-connection", "keep-alive", "proxy-authorization"] {
        upstream.remove_header(name);
    }
    let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    else {
        return Ok(());
    };
    let from_trusted = trusted.iter().any(|n| n.contains(&ip));
    let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    };
    let prior = |name: &str| {
        upstream
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| from_trusted && !v.is_empty())
    };
    let (xff, fwd) = forwarded_values(ip, proto, prior("x-forwarded-for"), prior("forwarded"))
        .map_err(|_| {
            Error::explain(
                ErrorType::InvalidHTTPHeader,
                "invalid X-Forwarded-For or Forwarded value",
            )
        })?;
    upstream.insert_header("x-forwarded-for", xff)?;
    upstream.insert_header("x-forwarded-proto", HeaderValue::from_static(proto))?;
    upstream.insert_header("forwarded", fwd)?;
    Ok(())
}

/// The `X-Forwarded-For` and `Forwarded` values for a client at `ip` that
/// came in over `proto` (`http` or `https`), appended to the values a
/// trusted peer sent (`prior_*`, `None` when the peer is not trusted or
/// sent none): `1.2.3.4` and `for=1.2.3.4;proto=http`, an IPv6 node
/// quoted and bracketed (`for="[::1]";proto=http`, RFC 7239 §6).
///
/// One heap allocation per value, the value's own buffer: the address is
/// formatted on the stack and the parts copied into a buffer of the exact
/// size, which `Bytes` then owns as is. (`format!` would allocate and
/// grow a `String`, and a `String` whose capacity exceeds its length costs
/// `Bytes` one more allocation.) `proxy/tests/alloc_request_path.rs`
/// counts them.
pub fn forwarded_values(
    ip: IpAddr,
    proto: &str,
    prior_xff: Option<&str>,
    prior_fwd: Option<&str>,
) -> Result<(HeaderValue, HeaderValue), http::header::InvalidHeaderValue> {
    let ip_text = IpText::new(ip);
    let ip_b = ip_text.as_bytes();
    let (open, close): (&[u8], &[u8]) = if ip.is_ipv6() {
        (b"\"[", b"]\"")
    } else {
        (b"", b"")
    };
    let xff = match prior_xff {
        Some(p) => joined(&[p.as_bytes(), b", ", ip_b])?,
        None => joined(&[ip_b])?,
    };
    let fwd = match prior_fwd {
        Some(p) => joined(&[
            p.as_bytes(),
            b", for=",
            open,
            ip_b,
            close,
            b";proto=",
            proto.as_bytes(),
        ])?,
        None => joined(&[b"for=", open, ip_b, close, b";proto=", proto.as_bytes()])?,
    };
    Ok((xff, fwd))
}

/// A header value made of `parts`, in one allocation of the exact size.
fn joined(parts: &[&[u8]]) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    // Length equals capacity, so `Bytes` takes the buffer over without a
    // second allocation, and `from_maybe_shared` keeps that `Bytes`.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
}

/// An IP address as text, formatted into a stack buffer.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        use std::fmt::Write;
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        // Cannot fail: an address's text is at most 39 bytes (full IPv6).
        let _ = write!(t, "{ip}");
        t
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the `proxy-*` and
/// `keep-alive` of older proxies): never passed on by the login call.
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
pub fn forward_request_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || name == "host"
        || name == "content-length"
        || is_tether_header(name))
}

/// Upstream login-answer headers passed back to the client.
pub fn pass_response_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name) || name == "content-length" || is_tether_header(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_filters() {
        assert!(!forward_request_header("x-tether-subject"));
        assert!(!forward_request_header("connection"));
        assert!(forward_request_header("content-type"));
        assert!(!pass_response_header("tether-relock"));
        assert!(pass_response_header("set-cookie"));
    }
}
