//! Headers the proxy reads, writes and strips: the bearer token, the
//! header limits, `X-Forwarded-*` / `Forwarded`, the internal `Tether-*`
//! and `X-Tether-*` headers, and the hop-by-hop headers of the login call.

use std::net::IpAddr;

use http::header::FORWARDED;
use http::request::Parts as ReqParts;
use http::{HeaderMap, HeaderName, HeaderValue};
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
    for_upstream_with(session, upstream, trusted, [])
}

/// [`for_upstream`], and the proxy's own headers for this request (`own`:
/// the identity headers of a local forward, or the hop marker), set in
/// the same pass.
pub fn for_upstream_with<const N: usize>(
    session: &Session,
    upstream: &mut RequestHeader,
    trusted: &[ipnet::IpNet],
    own: [Option<(HeaderName, HeaderValue)>; N],
) -> pingora_error::Result<()> {
    let ip = client_ip(session);
    let from_trusted = ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)));
    let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        "https"
    } else {
        "http"
    };
    with_plain_headers(upstream, 3 + N, |headers| {
        // One scan of the names removes both what the client may not say
        // and the proxy-only hop-by-hop headers (none, usually: no lookup
        // then).
        remove_where_in(headers, |name| {
            removed(name, from_trusted) || PROXY_HOP.contains(&name)
        });
        if let Some(ip) = ip {
            insert_forwarded(headers, proto, ip, from_trusted)?;
        }
        for (name, value) in own.into_iter().flatten() {
            headers.insert(name, value);
        }
        Ok(())
    })
}

/// Runs `edit` on the request's plain `http` header map, with room for
/// `room` more headers, outside Pingora's `RequestHeader`.
///
/// Why: a `RequestHeader` read from an HTTP/1 client keeps a second map
/// with each name as the client spelled it, and every `insert_header`
/// parses its name and writes both maps (about 1.7 k instructions and
/// one or two allocations per header, the maps grown one header at a
/// time; docs/benchmarks.md). The request is taken apart, edited, and put
/// together again without that map. What changes on the wire: header
/// names go upstream in their standard spelling (`Content-Type`, `Host`)
/// or, for other names, in lowercase (HTTP/2 and HAProxy lowercase all);
/// names are case-insensitive (RFC 9110 §5.1). The request target is kept
/// byte for byte: one the URI does not reproduce (absolute-form, not
/// UTF-8) is put back as it was.
fn with_plain_headers(
    upstream: &mut RequestHeader,
    room: usize,
    edit: impl FnOnce(&mut HeaderMap) -> pingora_error::Result<()>,
) -> pingora_error::Result<()> {
    let raw = upstream.raw_path();
    let restore =
        (!upstream.raw_path_is_utf8() || raw != uri_target(&upstream.uri)).then(|| raw.to_vec());
    let end_stream = upstream.send_end_stream();
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = ReqParts::from(std::mem::replace(upstream, empty));
    parts.headers.reserve(room);
    let edited = edit(&mut parts.headers);
    let mut back = RequestHeader::from(parts);
    if let Some(raw) = restore {
        back.set_raw_path(&raw)?;
    }
    if let Some(e) = end_stream {
        back.set_send_end_stream(e);
    }
    *upstream = back;
    edited
}

/// The request target a `RequestHeader` built from these parts writes:
/// the path and query, else the authority, else nothing.
fn uri_target(uri: &http::Uri) -> &[u8] {
    uri.path_and_query()
        .map(|p| p.as_str().as_bytes())
        .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default()
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

/// [`remove_where`] on a plain header map.
fn remove_where_in(headers: &mut HeaderMap, remove: impl Fn(&str) -> bool) {
    while let Some(name) = headers.keys().find(|k| remove(k.as_str())).cloned() {
        headers.remove(&name);
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
/// the upstream, for a client at `ip` that came in over `proto`: the
/// client's address is appended to what a trusted peer (a load balancer
/// in `routing.trusted_proxies`) sent, and replaces whatever anyone else
/// sent, so a client cannot forge its address.
///
/// On every proxied request, so the values are assembled without
/// `format!`: see [`forwarded_values`].
fn insert_forwarded(
    headers: &mut HeaderMap,
    proto: &'static str,
    ip: IpAddr,
    from_trusted: bool,
) -> pingora_error::Result<()> {
    let prior = |name: &HeaderName| {
        if !from_trusted {
            return None;
        }
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let (xff, fwd) = forwarded_values(ip, proto, prior(&X_FORWARDED_FOR), prior(&FORWARDED))
        .map_err(|_| {
            Error::explain(
                ErrorType::InvalidHTTPHeader,
                "invalid X-Forwarded-For or Forwarded value",
            )
        })?;
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(FORWARDED, fwd);
    Ok(())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The `X-Forwarded-For` and `Forwarded` values for a client at `ip` that
/// came in over `proto` (`http` or `https`), appended to the values a
/// trusted peer sent (`prior_*`, `None` or empty when the peer is not
/// trusted or sent none): `1.2.3.4` and `for=1.2.3.4;proto=http`, an IPv6
/// node quoted and bracketed (`for="[::1]";proto=http`, RFC 7239 §6).
///
/// On every proxied request, so the values are assembled without
/// `format!`: the address is formatted on the stack, and when both values
/// fit in [`PAIR_BYTES`] (always without a prior chain) they are written
/// into one buffer that both header values share: one heap allocation for
/// the two. A longer chain takes one allocation per value, each of the
/// exact size. `proxy/tests/alloc_request_path.rs` counts them.
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
    fn chain<'a>(prior: Option<&'a str>, sep: &'static [u8]) -> [&'a [u8]; 2] {
        match prior.filter(|p| !p.is_empty()) {
            Some(p) => [p.as_bytes(), sep],
            None => [b"", b""],
        }
    }
    let [px, sx] = chain(prior_xff, b", ");
    let [pf, sf] = chain(prior_fwd, b", ");
    let xff: [&[u8]; 3] = [px, sx, ip_b];
    let fwd: [&[u8]; 8] = [
        pf,
        sf,
        b"for=",
        open,
        ip_b,
        close,
        b";proto=",
        proto.as_bytes(),
    ];
    let xff_len: usize = xff.iter().map(|p| p.len()).sum();
    let fwd_len: usize = fwd.iter().map(|p| p.len()).sum();
    if xff_len + fwd_len <= PAIR_BYTES {
        let mut pair = Pair {
            len: 0,
            buf: [0; PAIR_BYTES],
        };
        for p in xff.iter().chain(fwd.iter()) {
            pair.buf[pair.len..pair.len + p.len()].copy_from_slice(p);
            pair.len += p.len();
        }
        // One allocation: the buffer moves into the `Bytes`' shared owner,
        // and the two slices are reference counts on it.
        let both = bytes::Bytes::from_owner(pair);
        return Ok((
            HeaderValue::from_maybe_shared(both.slice(..xff_len))?,
            HeaderValue::from_maybe_shared(both.slice(xff_len..))?,
        ));
    }
    Ok((joined(&xff)?, joined(&fwd)?))
}

/// The largest combined length of the two forwarded values that
/// [`forwarded_values`] writes into one shared buffer: room for any
/// single hop (the longest, an IPv6 address written in full over https,
/// is 98 bytes) and a short trusted chain.
pub const PAIR_BYTES: usize = 160;

/// The shared buffer of [`forwarded_values`].
struct Pair {
    len: usize,
    buf: [u8; PAIR_BYTES],
}

impl AsRef<[u8]> for Pair {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
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

    fn edited(mut req: RequestHeader) -> RequestHeader {
        with_plain_headers(&mut req, 2, |h| {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            h.remove("x-drop");
            Ok(())
        })
        .unwrap();
        req
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    /// Taking the request apart for the header work keeps its method,
    /// target (byte for byte, in every form), version and other headers;
    /// only the client's spelling of names is gone.
    #[test]
    fn plain_header_edit_keeps_the_request() {
        for target in [
            &b"/orders?id=1&x=%2F"[..],
            b"/",
            b"*",
            b"http://app.example/a%20b?q=1",
            b"/caf\xc3\xa9",
            b"/bad\xff\xfe?x",
        ] {
            let mut req = RequestHeader::build("POST", target, None).unwrap();
            req.insert_header("X-Custom-Thing", "1").unwrap();
            req.insert_header("Content-Type", "text/plain").unwrap();
            req.insert_header("x-drop", "1").unwrap();
            let (uri, raw, utf8) = (
                req.uri.clone(),
                req.raw_path().to_vec(),
                req.raw_path_is_utf8(),
            );
            let out = edited(req);
            assert_eq!(out.method, http::Method::POST);
            assert_eq!(out.raw_path(), &raw[..], "target {target:?}");
            assert_eq!(out.raw_path_is_utf8(), utf8, "target {target:?}");
            assert_eq!(out.uri, uri, "target {target:?}");
            assert!(!out.has_case());
            let w = wire(&out);
            assert!(w.contains("Content-Type: text/plain\r\n"), "{w}");
            assert!(w.contains("x-custom-thing: 1\r\n"), "{w}");
            assert!(w.contains("x-forwarded-proto: http\r\n"), "{w}");
            assert!(!w.contains("x-drop"), "{w}");
        }
    }

    #[test]
    fn plain_header_edit_keeps_http2_end_stream() {
        for end in [true, false] {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.set_version(http::Version::HTTP_2);
            req.set_send_end_stream(end);
            assert_eq!(edited(req).send_end_stream(), Some(end));
        }
    }

    #[test]
    fn plain_header_edit_puts_the_request_back_on_error() {
        let mut req = RequestHeader::build("GET", b"/keep", None).unwrap();
        req.insert_header("a", "1").unwrap();
        let r = with_plain_headers(&mut req, 0, |h| {
            h.insert("b", HeaderValue::from_static("2"));
            Err(Error::explain(ErrorType::InvalidHTTPHeader, "test"))
        });
        assert!(r.is_err());
        assert_eq!(req.raw_path(), b"/keep");
        assert_eq!(req.headers.len(), 2);
    }

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
