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

/// What a request header name is to the proxy, read the way backends read
/// names: case-insensitively, and with `_` as `-` (CGI, WSGI and many
/// frameworks fold `X_Tether_Subject` into `X-Tether-Subject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    /// `Tether-*`, `X-Tether-*`: the proxy's own; a client never sets them.
    Internal,
    /// A header that says where the request came from or which path it
    /// asks for (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
    /// `X-Original-URL`, …): taken only from a trusted proxy.
    Forwarding,
    /// Another name with an underscore: dropped, as nginx does by
    /// default, since the app cannot tell it from its dashed twin.
    Underscore,
    /// Anything else: passed on.
    Plain,
}

/// Forwarding headers (folded spelling, lowercase). The proxy sets
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` itself; the rest
/// are dropped unless a trusted proxy sent them. `X-Original-URL` and
/// `X-Rewrite-URL` are path overrides some frameworks honour: they would
/// let a request checked as one path be served as another.
const FORWARDING: [&str; 14] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
];

/// Whether `name` (lowercase, as `http` keeps names) equals `want` or
/// starts with it (`prefix`), reading `_` as `-`.
fn folded_match(name: &str, want: &str, prefix: bool) -> bool {
    let (n, w) = (name.as_bytes(), want.as_bytes());
    if n.len() < w.len() || (!prefix && n.len() != w.len()) {
        return false;
    }
    n.iter()
        .zip(w)
        .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

/// The class of a lowercase header name.
pub fn classify(name: &str) -> NameClass {
    if folded_match(name, "tether-", true) || folded_match(name, "x-tether-", true) {
        return NameClass::Internal;
    }
    if FORWARDING.iter().any(|f| folded_match(name, f, false)) {
        return NameClass::Forwarding;
    }
    if name.contains('_') {
        return NameClass::Underscore;
    }
    NameClass::Plain
}

/// Whether a client-sent header `name` is removed before the request goes
/// to an app; `from_trusted`: the peer is in `routing.trusted_proxies`.
fn removed(name: &str, from_trusted: bool) -> bool {
    match classify(name) {
        NameClass::Internal | NameClass::Underscore => true,
        // A trusted peer's dashed forwarding headers are kept (and
        // `X-Forwarded-For` / `Forwarded` appended to); an underscore
        // spelling never is.
        NameClass::Forwarding => !from_trusted || name.contains('_'),
        NameClass::Plain => false,
    }
}

/// Removes what a client may not say to the app (see [`classify`]): every
/// internal header in every spelling, every underscore name, and — unless
/// the peer is a trusted proxy — every forwarding header. The common case
/// (none present) is one scan of the names with no allocation.
pub fn scrub_request(req: &mut RequestHeader, from_trusted: bool) {
    remove_where(req, |name| removed(name, from_trusted));
}

/// Removes client-supplied internal headers (`Tether-*`, `X-Tether-*`,
/// in every spelling) from a request: [`scrub_request`] for an untrusted
/// peer, without the forwarding headers (which [`for_upstream`] replaces).
pub fn strip_internal_request_headers(req: &mut RequestHeader) {
    scrub_request(req, false);
}

/// Everything the proxy does to a request's headers before an app sees
/// it, on the request path and in the login call alike: the scrub, then
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` set from the
/// client's connection.
pub fn for_upstream(
    session: &Session,
    upstream: &mut RequestHeader,
    trusted: &[ipnet::IpNet],
) -> pingora_error::Result<()> {
    let ip = client_ip(session);
    let from_trusted = ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)));
    // One scan of the names removes both what the client may not say and
    // the proxy-only hop-by-hop headers (none, usually: no lookup then).
    remove_where(upstream, |name| {
        removed(name, from_trusted) || PROXY_HOP.contains(&name)
    });
    match ip {
        Some(ip) => insert_forwarded(session, upstream, ip, from_trusted),
        None => Ok(()),
    }
}

/// Headers only a proxy acts on, never passed to an app.
const PROXY_HOP: [&str; 3] = ["proxy-connection", "keep-alive", "proxy-authorization"];

/// Removes every header whose (lowercase) name `remove` picks: one scan
/// of the names, and a removal only for a match.
fn remove_where(req: &mut RequestHeader, remove: impl Fn(&str) -> bool) {
    while let Some(name) = req.headers.keys().find(|k| remove(k.as_str())).cloned() {
        req.remove_header(&name);
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
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
    for name in PROXY_HOP {
        upstream.remove_header(name);
    }
    let Some(ip) = client_ip(session) else {
        return Ok(());
    };
    let from_trusted = trusted.iter().any(|n| n.contains(&ip));
    insert_forwarded(session, upstream, ip, from_trusted)
}

/// The three forwarding headers of [`set_forwarded`], for a client at `ip`;
/// what was sent before is read only from a trusted peer.
fn insert_forwarded(
    session: &Session,
    upstream: &mut RequestHeader,
    ip: IpAddr,
    from_trusted: bool,
) -> pingora_error::Result<()> {
    let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    };
    let prior = |name: &str| {
        if !from_trusted {
            return None;
        }
        upstream
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
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
        match ip {
            // The common case, written digit by digit: `core::fmt` costs
            // about 1 k instructions per request here (callgrind).
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            // Cannot fail: an address's text is at most 39 bytes (full
            // IPv6, or 45 with an embedded IPv4 part).
            IpAddr::V6(_) => {
                let _ = write!(t, "{ip}");
            }
        }
        t
    }

    /// One byte; an IPv4 address is at most 15, far below the buffer.
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
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

/// Headers of an already scrubbed request ([`for_upstream`]) that the
/// login call still leaves out: the connection's own (hop-by-hop, `Host`,
/// `Content-Length`), which the HTTP client sets for its call.
pub fn forward_request_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || name == "host"
        || name == "content-length"
        || classify(name) == NameClass::Internal)
}

/// Upstream login-answer headers passed back to the client.
pub fn pass_response_header(name: &str) -> bool {
    !(HOP_BY_HOP.contains(&name)
        || name == "content-length"
        || classify(name) == NameClass::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_as_backends_fold_them() {
        use NameClass::*;
        for (name, class) in [
            ("x-tether-subject", Internal),
            ("x_tether_subject", Internal),
            ("x-tether_subject", Internal),
            ("x_tether-server", Internal),
            ("tether_access_token", Internal),
            ("tether-relock", Internal),
            ("x_forwarded_for", Forwarding),
            ("x-forwarded-host", Forwarding),
            ("x_forwarded_host", Forwarding),
            ("forwarded", Forwarding),
            ("x-real-ip", Forwarding),
            ("x-original-url", Forwarding),
            ("x_rewrite_url", Forwarding),
            ("x_custom", Underscore),
            ("_", Underscore),
            ("content-type", Plain),
            ("x-tether", Plain),
            ("x-forwarded-forx", Plain),
            ("tether", Plain),
        ] {
            assert_eq!(classify(name), class, "{name}");
        }
    }

    #[test]
    fn scrub_keeps_trusted_forwarding_only_dashed() {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        for (n, v) in [
            ("x-forwarded-for", "1.1.1.1"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("x_tether_subject", "admin"),
            ("content-type", "text/plain"),
        ] {
            r.append_header(n, v).expect("header");
        }
        let mut untrusted = r.clone();
        scrub_request(&mut untrusted, false);
        let names: Vec<_> = untrusted.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        scrub_request(&mut r, true);
        let mut names: Vec<_> = r.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-type", "x-forwarded-for", "x-forwarded-host"]
        );
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "10.200.5.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            let text = IpText::new(ip);
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes(), "{ip}");
        }
    }

    #[test]
    fn header_filters() {
        assert!(!forward_request_header("x-tether-subject"));
        assert!(!forward_request_header("connection"));
        assert!(forward_request_header("content-type"));
        assert!(!pass_response_header("tether-relock"));
        assert!(pass_response_header("set-cookie"));
    }
}
