//! The Pingora `ProxyHttp` implementation, and nothing else: each phase
//! calls the one module that decides ([`crate::headers`],
//! [`crate::endpoints`], [`crate::tokens`] and [`crate::lock`],
//! [`crate::hop`], [`crate::upstream`]) and answers through
//! [`crate::respond`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tether_protocol::headers as h;

use crate::idempotency::{self, Step};
use crate::lock::{self, Locked, Verdict};
use crate::metrics::Outcome;
use crate::state::State;
use crate::tokens::TokenError;
use crate::{cors, endpoints, framing, headers, path, respond};

/// The proxy's own request headers, as parsed names (no parsing per
/// request).
const SUBJECT: http::HeaderName = http::HeaderName::from_static(h::SUBJECT);
const SERVER: http::HeaderName = http::HeaderName::from_static(h::SERVER);
const HOP: http::HeaderName = http::HeaderName::from_static(h::HOP);

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

pub struct Ctx {
    target: Target,
    outcome: Outcome,
    /// The verified subject, ready to be the `X-Tether-Subject` value.
    subject: Option<HeaderValue>,
    upstream_started: Option<Instant>,
    in_flight: bool,
    /// The `Idempotency-Key` claim this request holds (docs/idempotency.md).
    idem: Option<Box<idempotency::Tracker>>,
    /// Times this request was sent again (`crate::retry`).
    retries: u8,
    /// For the access log (`crate::access`), kept only when it is on: the
    /// verified subject and the upstream's answer time.
    log_subject: Option<HeaderValue>,
    upstream_seconds: Option<f64>,
}

impl TetherProxy {
    /// Writes the request's access line (`crate::access`).
    fn access_line(&self, session: &Session, ctx: &Ctx) {
        let req = session.req_header();
        let peer = match ctx.target {
            Target::Foreign(addr) => Some(addr.to_string()),
            _ => None,
        };
        self.state.access.write(&crate::access::Line {
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            method: req.method.as_str(),
            path: req.uri.path(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            outcome: ctx.outcome.label(),
            subject: ctx.log_subject.as_ref().map(HeaderValue::as_bytes),
            upstream_seconds: ctx.upstream_seconds,
            server: peer.as_deref().unwrap_or(&self.state.cfg.server.id),
        });
    }

    fn is_public(&self, path: &str) -> bool {
        self.state
            .cfg
            .routing
            .public_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// Settles the request before anything reads it: framing refused or
    /// normalised ([`framing`]), and the one canonical path ([`path`])
    /// written back into the request, so the reserved-endpoint match, the
    /// public-prefix test, the hop marker and the forwarded request line
    /// all see the same path. `Err`: the error code and detail of a 400.
    fn settle_request(session: &mut Session) -> Result<(), (&'static str, &'static str)> {
        let raw = framing::needs_raw_head(session.req_header()).then(|| session.to_h1_raw());
        framing::check(session.req_header_mut(), raw.as_deref())
            .map_err(|e| ("bad_framing", e.detail()))?;
        let target = path::canonical_target(session.req_header().raw_path())
            .map_err(|e| ("invalid_path", e.detail()))?;
        if let Some(target) = target {
            let uri = http::Uri::try_from(target)
                .map_err(|_| ("invalid_path", path::PathError::NotAPath.detail()))?;
            session.req_header_mut().set_uri(uri);
        }
        Ok(())
    }

    /// The token check, with the lock located inside it: the claims stay
    /// borrowed, so a valid request is verified and routed without a heap
    /// allocation (on a cache hit the subject's header value is a shared
    /// clone; with the cache off it is the one copy made).
    fn check_token(&self, session: &Session) -> Result<Locked, TokenError> {
        let state = &self.state;
        let view = state.registry.load();
        let me = state.cfg.server.id.as_str();
        let token = headers::bearer(session)?;
        state.tokens.with_access(token, |claims| {
            let located = lock::locate(&view, me, claims, |id| state.prober.is_known_dead(id));
            if let Ok(Locked::Here(_)) = &located {
                state.lifecycle.locked.seen(claims.fam);
            }
            located
        })?
    }

    /// Sends the request to a healthy local upstream (`Ok(false)`: go on
    /// proxying) or answers 503 (`Ok(true)`).
    async fn forward_local(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        outcome: Outcome,
        subject: Option<HeaderValue>,
    ) -> pingora_error::Result<bool> {
        let Some(target) = self.local_target(session, ctx).await? else {
            return Ok(true);
        };
        ctx.target = target;
        ctx.outcome = outcome;
        // Idempotency-Key: only here, with a verified subject and the
        // upstream chosen (docs/design.md §9).
        if let (Some(idem), Some(s)) = (&self.state.idem, &subject) {
            match idem
                .request_filter(
                    session,
                    s.as_bytes(),
                    self.state.cfg.limits.body_read_timeout,
                )
                .await?
            {
                Step::Answered => {
                    ctx.outcome = Outcome::Idempotency;
                    return Ok(true);
                }
                Step::Forward(tracker) => ctx.idem = tracker,
            }
        }
        if self.state.access.enabled() {
            ctx.log_subject.clone_from(&subject);
        }
        ctx.subject = subject;
        Ok(false)
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

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // Only CORS, when configured. Pingora's default registers its
        // response-compression module at level 0, which compresses nothing
        // but still costs five heap allocations per request (its context,
        // the module list, and the boxed futures of its request-header,
        // request-body and response-header filters: docs/benchmarks.md,
        // "Allocations per request"). tether never compresses, so it
        // leaves that module out.
        cors::add_module(&self.state.cfg.cors, modules);
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            target: Target::None,
            outcome: Outcome::Refused,
            subject: None,
            upstream_started: None,
            in_flight: false,
            idem: None,
            retries: 0,
            log_subject: None,
            upstream_seconds: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<bool> {
        let state = &self.state;
        // Pipelined requests are answered in order (never left hanging);
        // a stalled request body ends in a 408 (`fail_to_proxy`).
        session.set_pipelining_enabled(true);
        session.set_read_timeout(Some(state.cfg.limits.body_read_timeout));
        if let Err(refusal) = Self::settle_request(session) {
            ctx.outcome = Outcome::Refused;
            respond::bad_request(session, refusal.0, refusal.1).await?;
            return Ok(true);
        }
        let limits = &state.cfg.limits;
        if headers::over_limits(session.req_header(), limits) {
            ctx.outcome = Outcome::Refused;
            let (fields, bytes) = (limits.max_request_headers, limits.max_request_header_bytes);
            respond::headers_too_large(session, fields, bytes).await?;
            return Ok(true);
        }
        if cors::is_preflight(&state.cfg.cors, session.req_header()) {
            ctx.outcome = Outcome::Reserved;
            cors::answer_preflight(session).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path();
        if let Some(ep) = endpoints::reserved(path) {
            ctx.outcome = Outcome::Reserved;
            endpoints::handle(ep, state, session).await?;
            return Ok(true);
        }
        if self.is_public(path) {
            return self
                .forward_local(session, ctx, Outcome::Public, None)
                .await;
        }
        let locked = match self.check_token(session) {
            Ok(locked) => locked,
            Err(e) => {
                state.metrics.token_invalid.inc();
                ctx.outcome = Outcome::InvalidToken;
                let no_credentials = e == TokenError::Missing;
                respond::invalid_token(session, e.detail(), no_credentials).await?;
                return Ok(true);
            }
        };
        state.metrics.token_ok.inc();
        // A request that already made its one hop must carry a valid marker.
        let hopped = match state.hop_key.check_request(session.req_header()) {
            Ok(hopped) => hopped,
            Err(e) => {
                ctx.outcome = Outcome::Refused;
                respond::invalid_hop(session, e).await?;
                return Ok(true);
            }
        };
        match lock::verdict(locked, hopped, state.cfg.routing.foreign_lock) {
            Verdict::Local(subject) => {
                self.forward_local(session, ctx, Outcome::Forwarded, Some(subject))
                    .await
            }
            Verdict::Forward(addr) => {
                ctx.target = Target::Foreign(addr);
                ctx.outcome = Outcome::ForwardedForeign;
                Ok(false)
            }
            Verdict::Relock(server) => {
                ctx.outcome = Outcome::RelockHint;
                respond::relock(session, server).await?;
                Ok(true)
            }
            Verdict::Refresh => {
                ctx.outcome = Outcome::ServerUnavailable;
                respond::server_unavailable(session).await?;
                Ok(true)
            }
            Verdict::Loop => {
                ctx.outcome = Outcome::Refused;
                respond::forward_loop(session).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        if ctx.retries > 0 {
            // A retry goes to the next healthy upstream of the pool.
            if let Target::Local(_) = ctx.target {
                if let Some(addr) = crate::upstream::select(&self.state.upstream)
                    .and_then(|b| b.addr.as_inet().copied())
                {
                    ctx.target = Target::Local(addr);
                }
            }
        }
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
        peer.options.idle_timeout = Some(up.idle_timeout);
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
        if let Some(t) = ctx.idem.as_mut() {
            t.upstream_request();
        }
        let own = match ctx.target {
            Target::Local(_) if ctx.outcome == Outcome::Forwarded => [
                ctx.subject.take().map(|s| (SUBJECT, s)),
                // Local forwards are locked to this server by definition.
                Some((SERVER, self.state.server_header.clone())),
            ],
            Target::Foreign(_) => {
                let marker = self
                    .state
                    .hop_key
                    .mark(session.req_header(), &self.state.cfg.server.id);
                let marker = HeaderValue::try_from(marker).map_err(|_| {
                    Error::explain(ErrorType::InternalError, "hop marker is not a header value")
                })?;
                [Some((HOP, marker)), None]
            }
            _ => [None, None],
        };
        headers::for_upstream_with(
            session,
            upstream,
            &self.state.cfg.routing.trusted_proxies,
            own,
        )
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        if let Some(t) = ctx.upstream_started.take() {
            let seconds = t.elapsed().as_secs_f64();
            self.state.metrics.upstream_seconds.observe(seconds);
            ctx.upstream_seconds = Some(seconds);
        }
        // The app must not be able to speak the lock protocol to clients;
        // a peer proxy (forward mode) may.
        if matches!(ctx.target, Target::Local(_)) {
            headers::strip_lock_response_headers(upstream_response);
        }
        if let Some(t) = ctx.idem.as_mut() {
            t.response_header(upstream_response);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<()> {
        if let Some(t) = ctx.idem.as_mut() {
            t.request_body(body.as_ref(), end_of_stream);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora_error::Result<Option<std::time::Duration>> {
        if let Some(t) = ctx.idem.as_mut() {
            t.response_body(body.as_ref(), end_of_stream);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: another member of the local pool may take it
        // (a peer proxy in forward mode is not retried: the client
        // refreshes instead).
        let pool = self.state.upstream.backends().get_backend().len();
        let retry = matches!(ctx.target, Target::Local(_))
            && pool > 1
            && crate::retry::retry_after_connect_error(e.etype(), ctx.retries);
        e.set_retry(retry);
        if retry {
            ctx.retries += 1;
            self.state.metrics.upstream_retries.inc();
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let (etype, hint) = crate::retry::parts(&e);
        let retry = crate::retry::retry_after_proxy_error(
            etype,
            hint,
            crate::retry::Attempt {
                reused: client_reused,
                body_replayable: !session.as_ref().retry_buffer_truncated(),
                response_started: session.response_written().is_some(),
                retries: ctx.retries,
            },
        );
        e.set_retry(retry);
        if retry {
            ctx.retries += 1;
            self.state.metrics.upstream_retries.inc();
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let before_response = session.response_written().is_none();
        let code = match (ctx.target, e.esource()) {
            // An h2 client that stalled its body: the upstream timed out
            // waiting for it (`http2::stalled_body`), the client's 408.
            (_, pingora_error::ErrorSource::Upstream)
                if before_response && crate::http2::stalled_body(session, e) =>
            {
                ctx.outcome = Outcome::Refused;
                if let Err(err) = respond::request_timeout(session).await {
                    tracing::debug!("writing 408 failed: {err}");
                }
                408
            }
            (Target::Local(_), pingora_error::ErrorSource::Upstream) if before_response => {
                let any_healthy = crate::upstream::select(&self.state.upstream).is_some();
                let failure = crate::retry::Failure::of(e.etype(), any_healthy);
                ctx.outcome = match failure {
                    crate::retry::Failure::Unavailable => Outcome::UpstreamUnavailable,
                    crate::retry::Failure::Timeout => Outcome::UpstreamTimeout,
                    crate::retry::Failure::BadAnswer => Outcome::UpstreamError,
                };
                if let Err(err) = respond::upstream_failed(session, failure).await {
                    tracing::debug!("writing {} failed: {err}", failure.status());
                }
                failure.status()
            }
            (Target::Foreign(_), pingora_error::ErrorSource::Upstream) if before_response => {
                ctx.outcome = Outcome::ServerUnavailable;
                if let Err(err) = respond::server_unavailable(session).await {
                    tracing::debug!("writing 503 failed: {err}");
                }
                503
            }
            _ => {
                let downstream = e.esource() == &pingora_error::ErrorSource::Downstream;
                let code = match e.etype() {
                    ErrorType::HTTPStatus(c) => *c,
                    // The client stalled its body: its slowness, a 408.
                    ErrorType::ReadTimedout if downstream => 408,
                    _ if downstream => 400,
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.in_flight {
            self.state.load.leave();
        }
        self.state.metrics.outcome(ctx.outcome);
        if let Some(t) = ctx.idem.take() {
            t.finish().await;
        }
        if self.state.access.sample() {
            self.access_line(session, ctx);
        }
    }
}
