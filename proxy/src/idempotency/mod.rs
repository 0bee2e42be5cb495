//! `Idempotency-Key` at the edge (docs/design.md §9,
//! draft-ietf-httpapi-idempotency-key-header-07): a retried POST or PATCH
//! is applied at most once by an unmodified app, as long as the proxy saw
//! the first answer.
//!
//! | situation | answer |
//! |---|---|
//! | covered method, key, no record | claim (atomic), forward, store the answer if storable |
//! | same key, same fingerprint, answer stored | replay it, `Idempotent-Replayed: true`; the app is not called |
//! | same key while the first is in flight | `409` |
//! | same key, other fingerprint | `422` |
//! | no key on a `required_prefixes` path, or a malformed key | `400` |
//! | store unreachable | `on_store_error`: `503` (default) or forward without dedupe |
//!
//! Records are scoped by the verified subject and the key, so one user's
//! key never replays another user's answer. Errors are
//! `application/problem+json` ([`problem`]).
//!
//! Where to read: [`key`] (header syntax), [`record`] (scope, fingerprint,
//! what is stored, which statuses), [`store`] (memory and Redis),
//! [`config`] (the `[idempotency]` table), [`phases`] (the Pingora glue).
//!
//! # Wiring into the `ProxyHttp` impl
//!
//! The shared state holds one `Arc<Idempotency>`, built at start-up from
//! the validated table and the proxy's metrics registry (no I/O: the
//! Redis connection opens on first use):
//!
//! ```text
//! let idem = Idempotency::new(cfg.idempotency.clone(), &metrics_registry)?;
//! ```
//!
//! The per-request `CTX` gains `idem: Option<Box<idempotency::Tracker>>`
//! (`None` in `new_ctx`). Then, phase by phase:
//!
//! ```text
//! request_filter:
//!     // Only for requests forwarded to *this* server's app with a verified
//!     // subject (`Decided::Local`), after the upstream was chosen (so "no
//!     // healthy upstream" is a plain 503 that claims nothing). Not for
//!     // public paths (no subject) nor for a forward-mode hop to another
//!     // server: the locked server's proxy applies it when the hop arrives.
//!     match state.idem.request_filter(session, subject_bytes).await? {
//!         Step::Answered => return Ok(true),     // replay, 400, 409, 422 or 503 written
//!         Step::Forward(tracker) => ctx.idem = tracker,   // None: not covered
//!     }
//!
//! upstream_request_filter:                        // once per upstream attempt
//!     if let Some(t) = ctx.idem.as_mut() { t.upstream_request(); }
//!
//! request_body_filter(session, body, end_of_stream, ctx):
//!     if let Some(t) = ctx.idem.as_mut() { t.request_body(body.as_ref(), end_of_stream); }
//!
//! upstream_response_filter(session, upstream_response, ctx):
//!     if let Some(t) = ctx.idem.as_mut() { t.response_header(upstream_response); }
//!
//! upstream_response_body_filter(session, body, end_of_stream, ctx):   // sync
//!     if let Some(t) = ctx.idem.as_mut() { t.response_body(body.as_ref(), end_of_stream); }
//!
//! logging(session, e, ctx):
//!     if let Some(t) = ctx.idem.take() { t.finish().await; }
//!         // complete: the app's whole answer was seen and is storable;
//!         // otherwise release, so a retry goes through
//! ```
//!
//! The upstream filters (not `response_filter`/`response_body_filter`) see
//! the app's answer before the proxy's own changes and never see the
//! proxy's own error pages, so only what the app said is stored.
//! [`Idempotency::request_filter`] also turns off Pingora's abort on client
//! close for claimed requests: a client that times out and hangs up still
//! lets the proxy read the app's answer and store it for the retry.
//!
//! # What "failed" means for the claim
//!
//! [`Tracker::finish`] stores the answer when the request body was sent in
//! full, the app's answer arrived in full (status, headers, body up to
//! `max_stored_response_bytes`) and its status is storable
//! ([`record::storable_status`]). Anything else (a 5xx, a connection
//! failure, an answer cut off or too large) releases the claim: the retry
//! is forwarded to the app again. A proxy that dies mid-request leaves its
//! claim until `in_flight_ttl` passes (retries get `409` meanwhile), then a
//! retry is forwarded again. In both cases the app may see the request
//! twice if the first one reached it: at-most-once holds when the proxy saw
//! the first answer.

pub mod config;
pub mod key;
pub mod metrics;
pub mod phases;
pub mod problem;
pub mod record;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

pub use config::{IdempotencyConfig, OnStoreError, StoreConfig};
pub use metrics::{IdempotencyMetrics, Outcome};
pub use phases::Step;
pub use problem::Problem;
pub use store::{ClaimResult, ClaimToken, IdempotencyStore, StoreError};

use metrics::Op;
use record::{Fingerprint, FingerprintBuilder, RecordWriter, Scope, StoredResponse};

/// The response header marking a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The engine: validated config, store, metrics. Shared by all requests.
pub struct Idempotency {
    cfg: IdempotencyConfig,
    store: Arc<dyn IdempotencyStore>,
    metrics: IdempotencyMetrics,
    /// Whether store calls are timed into `idempotency_store_seconds`:
    /// for stores that do I/O. The in-process store answers in well under
    /// a microsecond (docs/benchmarks.md), below the histogram's first
    /// bucket, and timing it cost two clock reads per call.
    timed: bool,
}

/// Building the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("idempotency metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("idempotency store: {0}")]
    Store(#[from] StoreError),
}

/// What to do with a request, decided before its body is read.
pub enum Begin {
    /// Not covered (disabled, other method, no key where none is
    /// required, or the store failed under `on_store_error = "forward"`):
    /// forward as usual, nothing to track.
    Pass,
    /// Answer with this problem now: `400`, `409`, or `503`.
    Reject(Problem),
    /// An answer is stored under this key: read the whole request body into
    /// the check, then answer with [`BodyCheck::finish`].
    Check(BodyCheck),
    /// This request holds the claim: forward it and track the exchange.
    Forward(Tracker),
}

/// The answer to a request whose key has a stored answer.
#[derive(Debug)]
pub enum Answer {
    Replay(Replay),
    /// `422`: the key was used for another request.
    Problem(Problem),
}

/// A stored answer to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub status: u16,
    /// The stored [`record::REPLAYED_HEADERS`]; `content-length` and
    /// `idempotent-replayed` are added when writing.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Idempotency {
    /// Builds the engine with the store the config names, registering the
    /// metrics on `registry` (the proxy's, which adds `tether_proxy_`).
    pub fn new(
        cfg: IdempotencyConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Idempotency>, BuildError> {
        let store: Arc<dyn IdempotencyStore> = match &cfg.store {
            StoreConfig::Memory {
                max_entries,
                max_bytes,
            } => {
                let memory = Arc::new(store::memory::MemoryStore::new(
                    *max_entries,
                    *max_bytes,
                    Arc::new(store::MonotonicClock::new()),
                ));
                registry.register(Box::new(metrics::MemoryStoreCollector::new(
                    memory.clone(),
                )?))?;
                memory
            }
            StoreConfig::Redis {
                url,
                key_prefix,
                timeout,
            } => Arc::new(store::redis::RedisStore::new(
                url.expose(),
                key_prefix,
                *timeout,
            )?),
        };
        let metrics = IdempotencyMetrics::new(registry)?;
        Ok(Idempotency::with_store(cfg, store, metrics))
    }

    /// Builds the engine around a given store (tests, custom stores).
    pub fn with_store(
        cfg: IdempotencyConfig,
        store: Arc<dyn IdempotencyStore>,
        metrics: IdempotencyMetrics,
    ) -> Arc<Idempotency> {
        let timed = store.as_memory().is_none();
        Arc::new(Idempotency {
            cfg,
            store,
            metrics,
            timed,
        })
    }

    pub fn config(&self) -> &IdempotencyConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &IdempotencyMetrics {
        &self.metrics
    }

    /// Whether requests with this method are covered at all: the check
    /// that costs a request without a key nothing else.
    pub fn covers(&self, method: &http::Method) -> bool {
        self.cfg.enabled && self.cfg.methods.iter().any(|m| m == method)
    }

    fn required(&self, path: &str) -> bool {
        self.cfg
            .required_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// Decides what to do with a request of the verified `subject`, from
    /// its head alone. Counts the outcomes it decides.
    pub async fn begin(
        self: &Arc<Self>,
        subject: &[u8],
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Begin {
        if !self.covers(method) {
            return Begin::Pass;
        }
        let key = match key::from_headers(headers) {
            Ok(Some(k)) => k,
            Ok(None) if self.required(uri.path()) => {
                self.metrics.outcome(Outcome::Missing400);
                return Begin::Reject(problem::key_missing());
            }
            Ok(None) => return Begin::Pass,
            Err(e) => {
                self.metrics.outcome(Outcome::Malformed400);
                return Begin::Reject(problem::key_malformed(&e));
            }
        };
        let scope = Scope::new(subject, key.as_str());
        let token = ClaimToken::fresh();
        let started = self.started();
        let claimed = self
            .store
            .claim_unboxed(&scope, &token, self.cfg.in_flight_ttl)
            .await;
        self.observe(Op::Claim, started);
        let fingerprint = FingerprintBuilder::new(method, uri);
        match claimed {
            Ok(ClaimResult::Claimed) => Begin::Forward(Tracker {
                engine: self.clone(),
                scope,
                token,
                fingerprint,
                request_done: false,
                response: Capture::Waiting,
            }),
            Ok(ClaimResult::InFlight) => {
                self.metrics.outcome(Outcome::Conflict409);
                Begin::Reject(problem::in_flight())
            }
            Ok(ClaimResult::Completed(bytes)) => match StoredResponse::decode(bytes) {
                Ok(stored) => Begin::Check(BodyCheck {
                    engine: self.clone(),
                    fingerprint,
                    stored,
                }),
                Err(e) => self.store_failed(&StoreError::Protocol(e.to_string())),
            },
            Err(e) => self.store_failed(&e),
        }
    }

    /// When a timed store call starts (`None`: the store is not timed).
    fn started(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    fn observe(&self, op: Op, started: Option<Instant>) {
        if let Some(t) = started {
            self.metrics.observe(op, t.elapsed().as_secs_f64());
        }
    }

    fn store_failed(&self, e: &StoreError) -> Begin {
        self.metrics.outcome(Outcome::StoreError);
        match self.cfg.on_store_error {
            OnStoreError::Reject => {
                tracing::warn!("idempotency store: {e}; answering 503");
                Begin::Reject(problem::store_unavailable())
            }
            OnStoreError::Forward => {
                tracing::warn!("idempotency store: {e}; forwarding without de-duplication");
                Begin::Pass
            }
        }
    }
}

/// Compares a request's body with a stored answer's fingerprint.
pub struct BodyCheck {
    engine: Arc<Idempotency>,
    fingerprint: FingerprintBuilder,
    stored: StoredResponse,
}

impl BodyCheck {
    pub fn update(&mut self, chunk: &[u8]) {
        self.fingerprint.update(chunk);
    }

    /// The stored answer when the request matches it, else `422`.
    pub fn finish(self) -> Answer {
        let m = &self.engine.metrics;
        if self.fingerprint.finish() == self.stored.fingerprint {
            m.outcome(Outcome::Replayed);
            Answer::Replay(Replay {
                status: self.stored.status,
                headers: self.stored.headers,
                body: self.stored.body,
            })
        } else {
            m.outcome(Outcome::Mismatch422);
            Answer::Problem(problem::key_reused())
        }
    }
}

/// The app's answer as seen so far.
enum Capture {
    /// No final response header yet.
    Waiting,
    /// Storable so far: encoded as it arrives.
    Open { record: RecordWriter, done: bool },
    /// Will not be stored (why, for the log).
    Refused(&'static str),
}

/// A claimed request on its way through the app. Put it in the `CTX`;
/// feed it from the phases; [`Tracker::finish`] it in `logging`.
pub struct Tracker {
    engine: Arc<Idempotency>,
    scope: Scope,
    token: ClaimToken,
    fingerprint: FingerprintBuilder,
    request_done: bool,
    response: Capture,
}

/// What [`Tracker::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Stored,
    /// Released (or the claim was already gone): a retry goes through.
    NotStored(&'static str),
    /// The store failed; the claim expires after `in_flight_ttl`.
    StoreError,
}

impl Tracker {
    /// A new upstream attempt starts: forget what the previous one sent
    /// and received.
    pub fn upstream_request(&mut self) {
        self.fingerprint.restart_body();
        self.request_done = false;
        self.response = Capture::Waiting;
    }

    /// A request-body chunk on its way upstream (`None`: no data).
    pub fn request_body(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        if let Some(c) = chunk {
            self.fingerprint.update(c);
        }
        if end_of_stream {
            self.request_done = true;
        }
    }

    /// The app's response header.
    pub fn response_header(&mut self, resp: &pingora_http::ResponseHeader) {
        self.response_head(resp.status.as_u16(), &resp.headers);
    }

    /// The app's response status and headers (what
    /// [`Tracker::response_header`] reads).
    pub fn response_head(&mut self, status: u16, headers: &http::HeaderMap) {
        if (100..200).contains(&status) && status != 101 {
            return; // informational; the final header follows
        }
        if !record::storable_status(status) {
            self.response = Capture::Refused("status not stored");
            return;
        }
        let max = self.engine.cfg.max_stored_response_bytes;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            self.response = Capture::Refused("body over max_stored_response_bytes");
            return;
        }
        let capacity = declared.map_or(1024, |n| n as usize).min(max);
        let Some(record) = RecordWriter::new(status, headers, capacity) else {
            self.response = Capture::Refused("headers too large to store");
            return;
        };
        self.response = Capture::Open {
            record,
            done: false,
        };
    }

    /// A chunk of the app's response body (`None`: no data).
    pub fn response_body(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        let max = self.engine.cfg.max_stored_response_bytes;
        if let Capture::Open { record, done } = &mut self.response {
            if let Some(c) = chunk {
                if record.body_len() + c.len() > max {
                    self.response = Capture::Refused("body over max_stored_response_bytes");
                    return;
                }
                record.push_body(c);
            }
            if end_of_stream {
                *done = true;
            }
        }
    }

    /// Why the answer would not be stored, or `None` when it would.
    pub fn not_storable(&self) -> Option<&'static str> {
        if !self.request_done {
            return Some("request body not sent in full");
        }
        match &self.response {
            Capture::Waiting => Some("no answer from the app"),
            Capture::Refused(why) => Some(why),
            Capture::Open { done: false, .. } => Some("answer cut off"),
            Capture::Open { done: true, .. } => None,
        }
    }

    /// Ends the request: stores the answer when it is storable, else
    /// releases the claim. Never fails: store errors are counted and
    /// logged, and the claim then expires after `in_flight_ttl`.
    pub async fn finish(self) -> Finished {
        let why = self.not_storable();
        let Tracker {
            engine,
            scope,
            token,
            fingerprint,
            response,
            ..
        } = self;
        let m = &engine.metrics;
        let started = engine.started();
        let result = match (why, response) {
            (None, Capture::Open { record, .. }) => {
                let record = record.finish(&fingerprint.finish());
                let r = engine
                    .store
                    .complete_unboxed(&scope, &token, record, engine.cfg.ttl)
                    .await;
                engine.observe(Op::Complete, started);
                match r {
                    Ok(true) => Finished::Stored,
                    Ok(false) => Finished::NotStored("claim lost before the answer came"),
                    Err(e) => {
                        tracing::warn!("idempotency store: storing an answer: {e}");
                        Finished::StoreError
                    }
                }
            }
            (why, _) => {
                let why = why.unwrap_or("not storable");
                let r = engine.store.release_unboxed(&scope, &token).await;
                engine.observe(Op::Release, started);
                match r {
                    Ok(_) => Finished::NotStored(why),
                    Err(e) => {
                        tracing::warn!("idempotency store: releasing a claim: {e}");
                        Finished::StoreError
                    }
                }
            }
        };
        m.outcome(match result {
            Finished::Stored => Outcome::Stored,
            Finished::NotStored(_) => Outcome::NotStored,
            Finished::StoreError => Outcome::StoreError,
        });
        result
    }

    /// The fingerprint of what was sent so far (tests).
    pub fn fingerprint_so_far(&self) -> Fingerprint {
        self.fingerprint.clone().finish()
    }
}
