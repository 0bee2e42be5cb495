//! The Pingora `ProxyHttp` implementation. Kept thin: each phase delegates
//! to the module that decides ([`crate::endpoints`], [`crate::tokens`],
//! [`crate::lock`], [`crate::upstream`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tether_protocol::headers as h;
use tether_protocol::wire::ErrorBody;

use crate::config::ForeignLock;
use crate::lock::{self, Route};
use crate::metrics::Outcome;
use crate::tokens::TokenError;
use crate::{respond, State};

pub struct TetherProxy {
    pub state: Arc<State>,
}

/// Where the request is going, decided in `request_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    /// This server's upstream pool.
    Local(SocketAddr),
    /// The locked server's proxy (forward mode), one hop.
    Foreign(SocketAddr),
}

/// The outcome of the token check and the lock decision.
enum Decided {
    /// Forward locally; the subject's header value.
    Local(HeaderValue),
    /// Locked to another live server.
    Foreign(tether_protocol::wire::ServerSummary, Option<SocketAddr>),
    Unavailable,
    Revoked,
    /// A subject that cannot be a header value.
    BadSubject,
}

pub struct Ctx {
    target: Target,
    outcome: Outcome,
    /// The verified subject, ready to be the `X-Tether-Subject` value.
    subject: Option<HeaderValue>,
    upstream_started: Option<Instant>,
    in_flight: bool,
}

fn bearer(session: &Session) -> Result<&str, TokenError> {
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
    fn internal(name: &str) -> bool {
        name.starts_with("x-tether-") || name.starts_with("tether-")
    }
    while let Some(name) = req.headers.keys().find(|k| internal(k.as_str())).cloned() {
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
fn headers_over_limits(req: &RequestHeader, limits: &crate::config::Limits) -> bool {
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
fn set_forwarded(
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

impl TetherProxy {
    fn is_public(&self, path: &str) -> bool {
        self.state
            .cfg
            .routing
            .public_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// Picks a healthy local upstream or answers 503 (returns `None`).
    async fn local_target(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<Option<Target>> {
        match crate::upstream::select(&self.state.upstream) {
            Some(b) => match b.addr.as_inet() {
                Some(addr) => Ok(Some(Target::Local(*addr))),
                None => Err(Error::explain(
                    ErrorType::InternalError,
                    "upstream is not an inet address",
                )),
            },
            None => {
                ctx.outcome = Outcome::UpstreamUnavailable;
                respond::upstream_unavailable(session).await?;
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for TetherProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            target: Target::None,
            outcome: Outcome::Refused,
            subject: None,
            upstream_started: None,
            in_flight: false,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<bool> {
        let state = &self.state;
        if headers_over_limits(session.req_header(), &state.cfg.limits) {
            ctx.outcome = Outcome::Refused;
            let body = ErrorBody::new("request_header_fields_too_large").detail(format!(
                "request headers are limited to {} fields and {} bytes",
                state.cfg.limits.max_request_headers, state.cfg.limits.max_request_header_bytes
            ));
            session.set_keepalive(None);
            respond::error(session, 431, &body, &[]).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path();
        if let Some(ep) = crate::endpoints::reserved(path) {
            ctx.outcome = Outcome::Reserved;
            crate::endpoints::handle(ep, state, session).await?;
            return Ok(true);
        }
        if self.is_public(path) {
            let Some(target) = self.local_target(session, ctx).await? else {
                return Ok(true);
            };
            ctx.target = target;
            ctx.outcome = Outcome::Public;
            return Ok(false);
        }

        // The lock decision, inside the token check: the claims stay
        // borrowed from the token, so a valid HS256 request is verified
        // and routed without a heap allocation (the one for the subject's
        // header value is the forwarded identity itself).
        let view = state.registry.load();
        let me = state.cfg.server.id.as_str();
        let decided = bearer(session).and_then(|t| {
            state.tokens.with_access(t, |c| {
                if view.registry.is_revoked(c.fam) {
                    return Decided::Revoked;
                }
                match lock::decide(&view, me, c.srv, |id| state.prober.is_known_dead(id)) {
                    Route::Local => match HeaderValue::from_str(c.sub) {
                        Ok(v) => Decided::Local(v),
                        Err(_) => Decided::BadSubject,
                    },
                    Route::Foreign(entry, addr) => Decided::Foreign(entry.summary(), addr),
                    Route::Unavailable => Decided::Unavailable,
                }
            })
        });
        drop(view);
        let decided = match decided {
            Ok(Decided::Revoked) => Err(TokenError::Revoked),
            Ok(Decided::BadSubject) => Err(TokenError::BadClaims),
            Ok(d) => Ok(d),
            Err(e) => Err(e),
        };
        let decided = match decided {
            Ok(d) => d,
            Err(e) => {
                state.metrics.token_invalid.inc();
                ctx.outcome = Outcome::InvalidToken;
                respond::invalid_token(session, e.detail()).await?;
                return Ok(true);
            }
        };
        state.metrics.token_ok.inc();

        // A request that already made its one hop must carry a valid marker.
        let mut hopped = false;
        if let Some(marker) = session.req_header().headers.get(h::HOP) {
            let req = session.req_header();
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let checked = marker
                .to_str()
                .map_err(|_| crate::hop::HopError::Malformed)
                .and_then(|m| {
                    state
                        .hop_key
                        .verify(m, req.method.as_str(), pq, crate::tokens::unix_now())
                        .map(|_| ())
                });
            if let Err(e) = checked {
                ctx.outcome = Outcome::Refused;
                let body = ErrorBody::new("invalid_hop").detail(e.to_string());
                respond::error(session, 403, &body, &[]).await?;
                return Ok(true);
            }
            hopped = true;
        }

        match decided {
            Decided::Local(subject) => {
                let Some(target) = self.local_target(session, ctx).await? else {
                    return Ok(true);
                };
                ctx.target = target;
                ctx.outcome = Outcome::Forwarded;
                ctx.subject = Some(subject);
            }
            Decided::Foreign(locked, addr) => {
                if hopped {
                    // Never a second hop: the sender thought we hold the lock.
                    ctx.outcome = Outcome::Refused;
                    let body = ErrorBody::new("forward_loop")
                        .detail("this request was already forwarded once");
                    respond::error(session, 508, &body, &[]).await?;
                    return Ok(true);
                }
                match (state.cfg.routing.foreign_lock, addr) {
                    (ForeignLock::Forward, Some(addr)) => {
                        ctx.target = Target::Foreign(addr);
                        ctx.outcome = Outcome::ForwardedForeign;
                    }
                    _ => {
                        let url = locked.url.clone();
                        let body = ErrorBody {
                            locked_server: Some(locked),
                            ..ErrorBody::new("wrong_server")
                        };
                        ctx.outcome = Outcome::RelockHint;
                        respond::error(session, 421, &body, &[(h::RELOCK, &url)]).await?;
                        return Ok(true);
                    }
                }
            }
            Decided::Unavailable | Decided::Revoked | Decided::BadSubject => {
                ctx.outcome = Outcome::ServerUnavailable;
                respond::server_unavailable(session).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let addr = match ctx.target {
            Target::Local(a) | Target::Foreign(a) => a,
            Target::None => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no target decided",
                ))
            }
        };
        let up = &self.state.cfg.upstream;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        if !ctx.in_flight {
            ctx.in_flight = true;
            self.state.load.enter();
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        strip_internal_request_headers(upstream);
        set_forwarded(session, upstream, &self.state.cfg.routing.trusted_proxies)?;
        match ctx.target {
            Target::Local(_) if ctx.outcome == Outcome::Forwarded => {
                if let Some(subject) = ctx.subject.take() {
                    upstream.insert_header(h::SUBJECT, subject)?;
                }
                // Local forwards are locked to this server by definition.
                upstream.insert_header(h::SERVER, self.state.server_header.clone())?;
            }
            Target::Foreign(_) => {
                let req = session.req_header();
                let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
                let marker = self.state.hop_key.sign(
                    req.method.as_str(),
                    pq,
                    crate::tokens::unix_now(),
                    &self.state.cfg.server.id,
                );
                upstream.insert_header(h::HOP, marker)?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        if let Some(t) = ctx.upstream_started.take() {
            self.state
                .metrics
                .upstream_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        // The app must not be able to speak the lock protocol to clients;
        // a peer proxy (forward mode) may.
        if matches!(ctx.target, Target::Local(_)) {
            strip_lock_response_headers(upstream_response);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        // Not retried here: the health check takes a dead upstream out of
        // rotation within one interval, and the client sees a clean 503.
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let before_response = session.response_written().is_none();
        let code = match (ctx.target, e.esource()) {
            (Target::Local(_), pingora_error::ErrorSource::Upstream) if before_response => {
                ctx.outcome = Outcome::UpstreamUnavailable;
                if let Err(err) = respond::upstream_unavailable(session).await {
                    tracing::debug!("writing 503 failed: {err}");
                }
                503
            }
            (Target::Foreign(_), pingora_error::ErrorSource::Upstream) if before_response => {
                ctx.outcome = Outcome::ServerUnavailable;
                if let Err(err) = respond::server_unavailable(session).await {
                    tracing::debug!("writing 503 failed: {err}");
                }
                503
            }
            _ => {
                let code = match e.etype() {
                    ErrorType::HTTPStatus(c) => *c,
                    _ if e.esource() == &pingora_error::ErrorSource::Downstream => 400,
                    _ => 502,
                };
                if before_response {
                    if let Err(err) = session.respond_error(code).await {
                        tracing::debug!("writing {code} failed: {err}");
                    }
                }
                code
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.in_flight {
            self.state.load.leave();
        }
        self.state.metrics.outcome(ctx.outcome);
    }
}
