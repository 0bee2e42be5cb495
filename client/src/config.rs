//! Client settings and their builder.

use std::sync::Arc;
use std::time::Duration;

use crate::resolver::{FixedUrl, GlobalUrl};
use crate::{Client, Error};

/// Where requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Straight to the locked server's URL (the default): no extra hop.
    #[default]
    Locked,
    /// To the global URL; the proxy that answers sends a `421` to the
    /// locked server, which the client follows for that request.
    Global,
}

/// Default wait before refreshing again when nothing can be reached.
pub const DEFAULT_RECONNECT_WAIT: Duration = Duration::from_secs(30);
/// Default number of reconnect waits before giving up.
pub const DEFAULT_MAX_RECONNECT_ATTEMPTS: u32 = 10;
/// Default whole-request timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connect timeout of the built-in HTTP client.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default refresh margin: refresh when less than 20 % of the access
/// token's lifetime remains.
pub const DEFAULT_REFRESH_MARGIN: f64 = 0.2;

/// The settings of a [`Client`], read-only after [`ClientBuilder::build`].
#[derive(Debug, Clone)]
pub struct Config {
    pub routing: Routing,
    pub reconnect_wait: Duration,
    pub max_reconnect_attempts: u32,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub refresh_margin: f64,
    pub event_capacity: usize,
    /// Send a fresh `Idempotency-Key` with every POST and PATCH, reused
    /// when the request is resent (default on).
    pub idempotency_keys: bool,
}

/// Builds a [`Client`]. Only the global URL is required.
pub struct ClientBuilder {
    resolver: Option<Arc<dyn GlobalUrl>>,
    http: Option<reqwest::Client>,
    config: Config,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            resolver: None,
            http: None,
            config: Config {
                routing: Routing::Locked,
                reconnect_wait: DEFAULT_RECONNECT_WAIT,
                max_reconnect_attempts: DEFAULT_MAX_RECONNECT_ATTEMPTS,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                refresh_margin: DEFAULT_REFRESH_MARGIN,
                event_capacity: 256,
                idempotency_keys: true,
            },
        }
    }
}

impl ClientBuilder {
    /// A fixed global URL, e.g. `http://tether.example.com`.
    pub fn global_url(mut self, url: impl Into<String>) -> Self {
        self.resolver = Some(Arc::new(FixedUrl(url.into())));
        self
    }

    /// A resolver consulted before every global call.
    pub fn resolver(mut self, resolver: Arc<dyn GlobalUrl>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// [`Routing::Locked`] (default) or [`Routing::Global`].
    pub fn routing(mut self, routing: Routing) -> Self {
        self.config.routing = routing;
        self
    }

    /// The "Reconnecting…" wait. Default 30 s.
    pub fn reconnect_wait(mut self, wait: Duration) -> Self {
        self.config.reconnect_wait = wait;
        self
    }

    /// How many reconnect waits before a call fails with
    /// [`Error::NoServerAvailable`]. Default 10.
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.config.max_reconnect_attempts = attempts;
        self
    }

    /// Whole-request timeout, per attempt. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Connect timeout of the built-in HTTP client (ignored with
    /// [`ClientBuilder::http_client`]). Default 3 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Refresh when less than `fraction` of the access token's lifetime
    /// remains; `0 <= fraction < 1`. Default 0.2.
    pub fn refresh_margin(mut self, fraction: f64) -> Self {
        self.config.refresh_margin = fraction;
        self
    }

    /// How many events a slow [`Client::events`] subscriber may lag behind
    /// before it misses some. Default 256.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Send a fresh `Idempotency-Key` (a random UUID as a quoted
    /// structured-field string) with every POST and PATCH, and resend it
    /// unchanged when the SDK resends the request, also after a timeout or
    /// a lost answer (docs/idempotency.md). Default on; off: writes carry
    /// no key and are never resent once they may have reached the app.
    pub fn idempotency_keys(mut self, on: bool) -> Self {
        self.config.idempotency_keys = on;
        self
    }

    /// Share one pooled HTTP client among many SDK clients (the demo's
    /// simulated users do). Give it a connect timeout shorter than the
    /// request timeout, so that an unreachable server shows up as a connect
    /// error (retried) rather than a timeout (never retried).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let resolver = self
            .resolver
            .ok_or_else(|| Error::Config("a global URL or resolver is required".into()))?;
        let c = &self.config;
        if !(0.0..1.0).contains(&c.refresh_margin) {
            return Err(Error::Config(format!(
                "refresh_margin {} is not allowed: expected a fraction of the token lifetime in [0, 1)",
                c.refresh_margin
            )));
        }
        if c.request_timeout.is_zero() || c.connect_timeout.is_zero() {
            return Err(Error::Config(
                "request_timeout and connect_timeout must be above zero".into(),
            ));
        }
        if c.event_capacity == 0 {
            return Err(Error::Config("event_capacity must be at least 1".into()));
        }
        let http = match self.http {
            Some(h) => h,
            None => default_http_client(c.connect_timeout)?,
        };
        Ok(Client::new(resolver, http, self.config))
    }
}

/// The HTTP client the builder makes when given none: pooled keep-alive
/// connections, the given connect timeout.
pub fn default_http_client(connect_timeout: Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}
