//! tether's central discovery service (docs/design.md §6): proxies announce
//! themselves with heartbeats, and pull the registry of live servers as a
//! versioned snapshot that they can long-poll.
//!
//! The embedded default keeps its state in one process's memory; with
//! `[store] kind = "etcd"` any number of stateless nodes share an etcd
//! cluster (see [`store`]). Proxies keep their last good snapshot when
//! discovery is down or restarting (the warm-up answer and every 503 tell
//! them to), so discovery is never on a client's request path.
//!
//! Start reading at:
//! - [`run`] / [`bind`] (this file): the listener, the sweeper, shutdown;
//! - `http.rs`: the routes and every status code of the contract;
//! - [`store`]: memory or etcd; [`registry`]: the in-memory state,
//!   versioning and eviction rules; `store/etcd.rs`: the same over etcd;
//! - [`config`]: the TOML file and its checks; [`metrics`]: the Prometheus
//!   series.
//!
//! **Why axum (on hyper and tokio).** Discovery is a small JSON API with one
//! unusual need, long-polls that park thousands of requests cheaply, which
//! is exactly what an async handler awaiting a `tokio::sync::watch` does.
//! axum is a thin, well-kept routing layer over hyper that the workspace
//! already builds (the sample app serves with it), so it adds no new
//! dependency tree. Pingora's service framework was the alternative; it is
//! built for proxying rather than for serving an API, and it owns the
//! process (signals, daemonising), which gets in the way of starting
//! discovery in-process in tests and in the demo.
#![forbid(unsafe_code)]

pub mod config;
pub mod families;
pub mod metrics;
pub mod registry;
pub mod store;

mod auth;
mod http;

use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::Config;
use metrics::Metrics;
use store::Store;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is the error's source: `{:#}` prints it once.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("writing the ready line to stdout: {0}")]
    Ready(std::io::Error),
    #[error("the server task ended abnormally: {0}")]
    Task(String),
    #[error("starting the store: {0}")]
    Store(#[from] store::StoreError),
}

/// How long shutdown waits for open requests before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by every handler.
pub(crate) struct App {
    pub(crate) config: Config,
    /// The registry, drain marks and refresh-token families.
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    started: Instant,
    /// Turns true on shutdown, so long-polls answer at once instead of
    /// holding the graceful shutdown open for their whole wait.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl App {
    /// `Some(time left)` while the service is warming up.
    /// Only the in-memory store warms up: over etcd the state survives.
    pub(crate) fn warmup_remaining(&self, now: Instant) -> Option<Duration> {
        if !self.store.warms_up() {
            return None;
        }
        let end = self.started + self.config.warmup;
        (now < end).then(|| end - now)
    }
}

/// A discovery service serving on its own tasks of the current tokio
/// runtime. Dropping it asks the service to stop.
pub struct Running {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    /// The bound address (the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://IP:PORT`, the base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Asks the service to stop: the listener closes, long-polls answer 304,
    /// open requests get [`SHUTDOWN_GRACE`] to finish.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the service has stopped (after [`Running::shutdown`], or
    /// on a fatal error). Cancel-safe: dropping this future leaves the
    /// service running and waitable again.
    pub async fn wait(&mut self) -> Result<(), Error> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task.await;
        self.task = None;
        result.map_err(|e| Error::Task(e.to_string()))?
    }

    /// [`Running::shutdown`], then [`Running::wait`].
    pub async fn stop(mut self) -> Result<(), Error> {
        self.shutdown();
        self.wait().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds the listener and starts serving on the current tokio runtime.
/// Nothing is printed; [`run`] adds the ready line and signal handling.
pub async fn bind(config: Config) -> Result<Running, Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::new()?);
    let (stop, stop_rx) = watch::channel(false);
    let store = match &config.store {
        config::StoreConfig::Memory => {
            Store::memory(config.ttl, config.refresh_grace, metrics.clone())
        }
        config::StoreConfig::Etcd(etcd) => Store::Etcd(
            store::etcd::EtcdStore::start(
                etcd,
                config.ttl,
                config.refresh_grace,
                metrics.clone(),
                stop_rx.clone(),
            )
            .await?,
        ),
    };
    let app = Arc::new(App {
        config,
        store,
        metrics,
        started: Instant::now(),
        shutdown: stop_rx.clone(),
    });
    let sweeper = tokio::spawn(sweep(app.clone(), stop_rx.clone()));
    let router = http::router(app);
    // Small JSON answers written once per request: Nagle would only add
    // delay on keep-alive connections.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        let mut graceful_rx = stop_rx.clone();
        let mut grace_rx = stop_rx;
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            // An error means every sender is gone, which also means stop.
            let _stopping = graceful_rx.wait_for(|stop| *stop).await.is_ok();
        });
        let result = tokio::select! {
            r = serve.into_future() => r.map_err(Error::Serve),
            () = async {
                let _stopping = grace_rx.wait_for(|stop| *stop).await.is_ok();
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after shutdown began; closing them");
                Ok(())
            }
        };
        if let Err(e) = sweeper.await {
            tracing::error!(error = %e, "the eviction sweeper ended abnormally");
        }
        result
    });
    tracing::info!(addr = %local_addr, "discovery listening");
    Ok(Running {
        local_addr,
        stop,
        task: Some(task),
    })
}

/// Serves until SIGINT or SIGTERM. Once bound, prints exactly one line to
/// stdout, `tether discovery listening on http://IP:PORT`, which scripts and
/// test kits wait for.
pub async fn run(config: Config) -> Result<(), Error> {
    let mut running = bind(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tether discovery listening on http://{}",
            running.local_addr()
        )
        .and_then(|()| out.flush())
        .map_err(Error::Ready)?;
    }
    tokio::select! {
        signal = shutdown_signal() => {
            let signal = signal?;
            tracing::info!("{signal}: shutting down");
            running.shutdown();
            running.wait().await
        }
        result = running.wait() => result,
    }
}

async fn shutdown_signal() -> Result<&'static str, Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(Error::Signal),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(Error::Signal)?;
        Ok("ctrl-c")
    }
}

/// Evicts silent servers in the background so that metrics fall and
/// long-polls wake when a server dies, even if nobody reads the listing.
/// Sleeps until the next server could expire, but never less than a small
/// granularity, so a registry of thousands of staggered servers is scanned a
/// few times per TTL rather than once per server.
/// (The etcd store needs none: etcd expires the leases.)
async fn sweep(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Store::Memory(memory) = &app.store else {
        return;
    };
    let ttl = memory.registry.ttl();
    let granularity = (ttl / 50).clamp(Duration::from_millis(5), Duration::from_millis(100));
    loop {
        let now = Instant::now();
        let sweep = memory.registry.sweep(now);
        let next = sweep
            .next_expiry
            .unwrap_or(now + ttl)
            .max(now + granularity);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
