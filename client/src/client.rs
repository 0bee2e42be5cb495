//! The client: login, requests that follow the lock, refresh, logout.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tether_protocol::wire::{
    ClosestResponse, LogoutRequest, RefreshRequest, RefreshResponse, ServerSummary,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::{ClientBuilder, Config, Routing};
use crate::critical::CriticalTask;
use crate::events::{Counters, Event, RefreshCause, Stats};
use crate::idempotency;
use crate::resolver::GlobalUrl;
use crate::retry::{classify, Action};
use crate::session::{check_url, join, parse_login_headers, Session};
use crate::Error;

/// An answer of the app (or, once the SDK's retries are spent, of the
/// proxy), read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL the answer came from.
    pub url: String,
}

impl Response {
    /// The body as JSON; bad JSON is an [`Error::BadAnswer`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::BadAnswer {
            what: "response",
            detail: format!("body is not the expected JSON: {e}"),
        })
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The server the client is now locked to.
    pub server: ServerSummary,
    /// Access-token lifetime.
    pub expires_in: Duration,
    /// The app's login answer, untouched (e.g. `{"userId",…}`).
    pub response: Response,
}

/// The outcome of a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub server: ServerSummary,
    pub server_changed: bool,
    /// The proxy's reason, wire spelling (`kept`, `server_down`, …).
    pub reason: String,
}

/// A client of one user. Cheap to clone; clones share the session, the
/// events and the counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: Arc<dyn GlobalUrl>,
    http: reqwest::Client,
    config: Config,
    session: Mutex<Option<Session>>,
    /// Held for the whole of a refresh: one refresh at a time.
    refresh_gate: tokio::sync::Mutex<()>,
    generation: Mutex<u64>,
    critical: Arc<AtomicUsize>,
    events: broadcast::Sender<Event>,
    counters: Counters,
}

/// How a send failed.
enum SendError {
    /// Nothing reached the server.
    Connect(reqwest::Error),
    /// The request may have reached the server.
    Other(reqwest::Error),
}

/// What one `request` call has spent of its retries.
#[derive(Default)]
struct Spent {
    relock: bool,
    refresh: bool,
    invalid_token: bool,
    connect_failures: u32,
    reconnect_waits: u32,
    in_flight_waits: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn new(resolver: Arc<dyn GlobalUrl>, http: reqwest::Client, config: Config) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity);
        Client {
            inner: Arc::new(Inner {
                resolver,
                http,
                config,
                session: Mutex::new(None),
                refresh_gate: tokio::sync::Mutex::new(()),
                generation: Mutex::new(0),
                critical: Arc::new(AtomicUsize::new(0)),
                events,
                counters: Counters::default(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Subscribes to lock events (only those sent after this call).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// The server the client is locked to, if logged in.
    pub fn server(&self) -> Option<ServerSummary> {
        self.session().as_ref().map(|s| s.server.clone())
    }

    /// The current access token, if logged in (for tests and debugging).
    pub fn access_token(&self) -> Option<String> {
        self.session().as_ref().map(|s| s.access_token.clone())
    }

    pub fn is_logged_in(&self) -> bool {
        self.session().is_some()
    }

    /// Starts a critical task: until the guard drops, refreshes send
    /// `criticalTaskInProgress: true` and the proxy keeps the server.
    pub fn critical_task(&self) -> CriticalTask {
        CriticalTask::new(&self.inner.critical)
    }

    /// Critical-task guards alive now.
    pub fn critical_tasks(&self) -> usize {
        self.inner
            .critical
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn session(&self) -> MutexGuard<'_, Option<Session>> {
        // Every write replaces the whole Option, so a poisoned lock still
        // holds a consistent value.
        self.inner.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Result<Session, Error> {
        self.session().clone().ok_or(Error::NotLoggedIn)
    }

    fn next_generation(&self) -> u64 {
        let mut g = self
            .inner
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *g += 1;
        *g
    }

    fn emit(&self, event: Event) {
        // Err only means nobody is subscribed right now, which is fine.
        if self.inner.events.send(event).is_err() {
            tracing::trace!("lock event with no subscriber");
        }
    }

    async fn global(&self) -> Result<String, Error> {
        let url = self.inner.resolver.resolve().await?;
        check_url(&url).map_err(|d| Error::Resolve(crate::ResolveError(d)))?;
        Ok(url)
    }

    /// Sleeps the reconnect wait, or fails when the waits are spent.
    async fn reconnect_wait(&self, spent: &mut u32, last: Error) -> Result<(), Error> {
        if *spent >= self.inner.config.max_reconnect_attempts {
            return Err(Error::NoServerAvailable {
                attempts: *spent,
                last: Box::new(last),
            });
        }
        *spent += 1;
        let wait = self.inner.config.reconnect_wait;
        tracing::info!(error = %last, attempt = *spent, ?wait, "reconnecting");
        Counters::bump(&self.inner.counters.reconnect_waits);
        self.emit(Event::Reconnecting {
            wait,
            attempt: *spent,
        });
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Bytes>,
        key: Option<&HeaderValue>,
    ) -> Result<Response, SendError> {
        let mut rb = self
            .inner
            .http
            .request(method, url)
            .timeout(self.inner.config.request_timeout);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(k) = key {
            rb = rb.header(idempotency::HEADER, k.clone());
        }
        if let Some(b) = body {
            rb = rb
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(b.clone());
        }
        let res = rb.send().await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(e)
            } else {
                SendError::Other(e)
            }
        })?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.bytes().await.map_err(SendError::Other)?;
        Ok(Response {
            status,
            headers,
            body,
            url: url.to_owned(),
        })
    }

    async fn send_json(
        &self,
        what: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Response, Error> {
        let bytes = body.map(encode).transpose()?;
        self.send(method, url, None, bytes.as_ref(), None)
            .await
            .map_err(|e| match e {
                SendError::Connect(source) => Error::Connect {
                    what,
                    url: url.to_owned(),
                    source,
                },
                SendError::Other(source) => Error::Transport {
                    what,
                    url: url.to_owned(),
                    source,
                },
            })
    }

    /// `POST {global}/auth/login` with the app's own login body. On a 2xx,
    /// locks the client to the server named in the `Tether-*` headers.
    /// A non-2xx is [`Error::Status`] carrying the app's error body. A
    /// connection failure is retried after the reconnect wait (the login
    /// cannot have reached the app).
    pub async fn login(&self, body: &Value) -> Result<Login, Error> {
        let payload = encode(body)?;
        let mut waits = 0;
        let res = loop {
            let url = match self.global().await {
                Ok(g) => join(&g, "/auth/login"),
                Err(e) => {
                    self.reconnect_wait(&mut waits, e).await?;
                    continue;
                }
            };
            match self
                .send(Method::POST, &url, None, Some(&payload), None)
                .await
            {
                Ok(res) => break res,
                Err(SendError::Connect(source)) => {
                    let e = Error::Connect {
                        what: "login",
                        url,
                        source,
                    };
                    self.reconnect_wait(&mut waits, e).await?;
                }
                Err(SendError::Other(source)) => {
                    return Err(Error::Transport {
                        what: "login",
                        url,
                        source,
                    })
                }
            }
        };
        if !res.status.is_success() {
            return Err(Error::status("login", res.status, &res.body));
        }
        let h = parse_login_headers(&res.headers)?;
        let session = Session {
            access_token: h.access_token,
            refresh_token: h.refresh_token,
            lifetime: Duration::from_secs(h.expires_in),
            obtained: Instant::now(),
            server: h.server.clone(),
            generation: self.next_generation(),
        };
        *self.session() = Some(session);
        Counters::bump(&self.inner.counters.logins);
        self.emit(Event::LoggedIn {
            server: h.server.clone(),
        });
        Ok(Login {
            server: h.server,
            expires_in: Duration::from_secs(h.expires_in),
            response: res,
        })
    }

    /// Refreshes now, whatever the token's age.
    ///
    /// A refresh that cannot get through (the global URL's proxy died or
    /// the answer was lost on the way) is tried again after the reconnect
    /// wait, within the reconnect budget: a refresh changes no app state,
    /// and the proxy answers a repeated refresh of the same token.
    pub async fn refresh(&self) -> Result<Refreshed, Error> {
        self.refresh_retrying(RefreshCause::Manual, false).await
    }

    /// Refreshes telling the proxy that the locked server seems
    /// unreachable (`unreachableServerId`): for an app whose request failed
    /// without an answer (a timeout, a reset). The proxy probes the server
    /// and moves the client only if the probe fails too, so a false alarm
    /// costs nothing.
    pub async fn refresh_unreachable(&self) -> Result<Refreshed, Error> {
        self.refresh_retrying(RefreshCause::Unreachable, true).await
    }

    async fn refresh_retrying(
        &self,
        cause: RefreshCause,
        unreachable: bool,
    ) -> Result<Refreshed, Error> {
        let _gate = self.inner.refresh_gate.lock().await;
        let mut spent = 0;
        loop {
            let suspect = if unreachable {
                Some(self.current()?.server.id)
            } else {
                None
            };
            match self.refresh_locked(cause, suspect).await {
                Err(e @ (Error::Connect { .. } | Error::Transport { .. })) => {
                    self.reconnect_wait(&mut spent, e).await?;
                }
                other => return other,
            }
        }
    }

    /// Refreshes unless the session changed since generation `seen` (then
    /// another task already refreshed, and its result stands).
    async fn refresh_from(
        &self,
        seen: u64,
        cause: RefreshCause,
        unreachable: Option<String>,
    ) -> Result<(), Error> {
        let _gate = self.inner.refresh_gate.lock().await;
        if self.current()?.generation != seen {
            return Ok(());
        }
        self.refresh_locked(cause, unreachable).await.map(|_| ())
    }

    /// `GET {global}/closestToMe`, then `POST {global}/auth/refresh`.
    /// Call with the refresh gate held.
    async fn refresh_locked(
        &self,
        cause: RefreshCause,
        unreachable: Option<String>,
    ) -> Result<Refreshed, Error> {
        let old = self.current()?;
        let global = self.global().await?;
        let closest = self.closest(&global).await?;
        let request = RefreshRequest {
            refresh_token: old.refresh_token.clone(),
            closest_server_id: closest,
            critical_task_in_progress: self.critical_tasks() > 0,
            unreachable_server_id: unreachable.clone(),
        };
        let body = serde_json::to_value(&request).map_err(Error::Encode)?;
        let url = join(&global, "/auth/refresh");
        let res = self
            .send_json("refresh", Method::POST, &url, Some(&body))
            .await?;
        if res.status == StatusCode::UNAUTHORIZED {
            *self.session() = None;
            self.emit(Event::LoggedOut);
            return Err(Error::SessionExpired {
                body: serde_json::from_slice(&res.body).ok().map(Box::new),
            });
        }
        if !res.status.is_success() {
            return Err(Error::status("refresh", res.status, &res.body));
        }
        let answer: RefreshResponse =
            serde_json::from_slice(&res.body).map_err(|e| Error::BadAnswer {
                what: "refresh",
                detail: format!("body is not a refresh answer: {e}"),
            })?;
        let server_changed = answer.server_changed;
        let reason = answer.reason.clone();
        let new = Session::from_refresh(answer, Instant::now(), self.next_generation())?;
        let server = new.server.clone();
        *self.session() = Some(new);

        let c = &self.inner.counters;
        Counters::bump(&c.refreshes);
        if unreachable.is_some() {
            Counters::bump(&c.failovers);
        }
        tracing::debug!(server = %server.id, %reason, server_changed, ?cause, "refreshed");
        self.emit(Event::Refreshed {
            server: server.clone(),
            server_changed,
            reason: reason.clone(),
            cause,
        });
        if server_changed {
            Counters::bump(&c.server_changes);
            self.emit(Event::ServerChanged {
                from: old.server,
                to: server.clone(),
                reason: reason.clone(),
            });
        }
        Ok(Refreshed {
            server,
            server_changed,
            reason,
        })
    }

    /// The closest server's id. Only a failure to get through is an error:
    /// a bad or non-2xx answer leaves the field out (the proxy then uses
    /// itself as the closest, docs/design.md §4).
    async fn closest(&self, global: &str) -> Result<Option<String>, Error> {
        let url = join(global, "/closestToMe");
        let res = self
            .send_json("closestToMe", Method::GET, &url, None)
            .await?;
        if !res.status.is_success() {
            tracing::warn!(status = %res.status, "closestToMe failed; refreshing without closestServerId");
            return Ok(None);
        }
        match serde_json::from_slice::<ClosestResponse>(&res.body) {
            Ok(c) => Ok(Some(c.closest_server_id)),
            Err(e) => {
                tracing::warn!(error = %e, "bad closestToMe answer; refreshing without closestServerId");
                Ok(None)
            }
        }
    }

    /// Refreshes after the locked server could not be reached, with
    /// `unreachableServerId`; while even that cannot get through, waits
    /// and tries again, within the reconnect budget.
    async fn recover(
        &self,
        seen: u64,
        unreachable: Option<String>,
        waits: &mut u32,
    ) -> Result<(), Error> {
        loop {
            match self
                .refresh_from(seen, RefreshCause::Unreachable, unreachable.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unreachable() => self.reconnect_wait(waits, e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// The session, refreshed first when its access token is near expiry.
    async fn fresh_session(&self, spent: &mut Spent) -> Result<Session, Error> {
        let s = self.current()?;
        let now = Instant::now();
        if !s.refresh_due(now, self.inner.config.refresh_margin) {
            return Ok(s);
        }
        match self
            .refresh_from(s.generation, RefreshCause::Expiry, None)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_unreachable() && !s.expired(Instant::now()) => {
                // Still valid: use it, and try again before the next request.
                tracing::warn!(error = %e, "early refresh failed; the access token is still valid");
            }
            Err(e) if e.is_unreachable() => {
                self.reconnect_wait(&mut spent.reconnect_waits, e).await?;
                self.recover(s.generation, None, &mut spent.reconnect_waits)
                    .await?;
            }
            Err(e) => return Err(e),
        }
        self.current()
    }

    /// Sends `method path` with the access token, following the lock (see
    /// the crate docs for the retry rules). Every HTTP answer of the app is
    /// returned as a [`Response`], whatever its status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, Error> {
        Counters::bump(&self.inner.counters.requests);
        let payload = body.map(encode).transpose()?;
        // One key for this call, on every resend of it.
        let key = (self.inner.config.idempotency_keys && idempotency::covered(&method))
            .then(idempotency::new_key);
        let mut spent = Spent::default();
        // After a 421: where to resend (Global routing; Locked routing
        // uses the updated session instead).
        let mut relock_url: Option<String> = None;
        let mut first = true;
        loop {
            if !first {
                Counters::bump(&self.inner.counters.retries);
            }
            first = false;
            let session = self.fresh_session(&mut spent).await?;
            let (base, to_locked) = match (relock_url.take(), self.inner.config.routing) {
                (Some(url), _) => (url, true),
                (None, Routing::Locked) => (session.server.url.clone(), true),
                (None, Routing::Global) => match self.global().await {
                    Ok(g) => (g, false),
                    Err(e) => {
                        self.reconnect_wait(&mut spent.reconnect_waits, e).await?;
                        continue;
                    }
                },
            };
            let url = join(&base, path);
            let res = match self
                .send(
                    method.clone(),
                    &url,
                    Some(&session.access_token),
                    payload.as_ref(),
                    key.as_ref(),
                )
                .await
            {
                Ok(res) => res,
                Err(SendError::Other(source)) if key.is_none() => {
                    return Err(Error::Transport {
                        what: "request",
                        url,
                        source,
                    });
                }
                // With a key a lost answer is resent like a failed connect:
                // the proxy answers a request the app already handled with
                // the stored answer (docs/idempotency.md).
                Err(SendError::Connect(source) | SendError::Other(source)) => {
                    let e = if source.is_connect() {
                        Error::Connect {
                            what: "request",
                            url,
                            source,
                        }
                    } else {
                        Error::Transport {
                            what: "request",
                            url,
                            source,
                        }
                    };
                    tracing::info!(error = %e, "cannot reach the server");
                    spent.connect_failures += 1;
                    if spent.connect_failures > 1 {
                        // The refresh right after the first failure did not
                        // help: this is the seed's "Reconnecting…" case.
                        self.reconnect_wait(&mut spent.reconnect_waits, e).await?;
                    }
                    // Only the locked server can be reported unreachable;
                    // with Global routing it was the global URL that failed.
                    let unreachable = to_locked.then(|| session.server.id.clone());
                    self.recover(session.generation, unreachable, &mut spent.reconnect_waits)
                        .await?;
                    continue;
                }
            };
            if res.headers.get(idempotency::REPLAYED).is_some() {
                Counters::bump(&self.inner.counters.replayed);
            }
            match classify(res.status, &res.headers, &res.body) {
                Action::Relock { url, server } if !spent.relock => {
                    spent.relock = true;
                    let to = {
                        let mut guard = self.session();
                        let Some(s) = guard.as_mut() else {
                            return Err(Error::NotLoggedIn);
                        };
                        match server {
                            Some(found) => s.server = found,
                            None => s.server.url.clone_from(&url),
                        }
                        s.server.clone()
                    };
                    Counters::bump(&self.inner.counters.relocks);
                    self.emit(Event::Relocked { from_url: base, to });
                    relock_url = Some(url);
                }
                Action::Refresh if !spent.refresh => {
                    spent.refresh = true;
                    let id = Some(session.server.id.clone());
                    self.recover_once(
                        session.generation,
                        RefreshCause::ServerUnavailable,
                        id,
                        &mut spent,
                    )
                    .await?;
                }
                Action::InvalidToken if !spent.invalid_token => {
                    spent.invalid_token = true;
                    self.recover_once(
                        session.generation,
                        RefreshCause::InvalidToken,
                        None,
                        &mut spent,
                    )
                    .await?;
                }
                Action::InFlight { retry_after }
                    if key.is_some()
                        && spent.in_flight_waits < self.inner.config.max_reconnect_attempts =>
                {
                    spent.in_flight_waits += 1;
                    let wait = retry_after.min(self.inner.config.reconnect_wait);
                    tracing::info!(?wait, "first attempt still at the app; resending");
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(res),
            }
        }
    }

    /// A refresh demanded by the proxy; falls back to the reconnect waits
    /// when it cannot get through.
    async fn recover_once(
        &self,
        seen: u64,
        cause: RefreshCause,
        unreachable: Option<String>,
        spent: &mut Spent,
    ) -> Result<(), Error> {
        match self.refresh_from(seen, cause, unreachable.clone()).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_unreachable() => {
                self.reconnect_wait(&mut spent.reconnect_waits, e).await?;
                self.recover(seen, unreachable, &mut spent.reconnect_waits)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Response, Error> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `POST {global}/auth/logout`: revokes the refresh family and forgets
    /// the session. A `401` (already revoked or expired) also ends it.
    pub async fn logout(&self) -> Result<(), Error> {
        let s = self.current()?;
        let global = self.global().await?;
        let body = serde_json::to_value(LogoutRequest {
            refresh_token: s.refresh_token,
        })
        .map_err(Error::Encode)?;
        let res = self
            .send_json(
                "logout",
                Method::POST,
                &join(&global, "/auth/logout"),
                Some(&body),
            )
            .await?;
        if res.status.is_success() || res.status == StatusCode::UNAUTHORIZED {
            *self.session() = None;
            self.emit(Event::LoggedOut);
            Ok(())
        } else {
            Err(Error::status("logout", res.status, &res.body))
        }
    }
}

fn encode(v: &Value) -> Result<Bytes, Error> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(Error::Encode)
}
