//! Starting, inspecting and stopping the regions of one sample-app process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, RegionState, RegionStats};
use crate::replication::Replicator;
use crate::store::Store;
use crate::users::{Users, DEFAULT_USERS};
use crate::Error;

/// Default replication lag (`--lag-ms`).
pub const DEFAULT_LAG: Duration = Duration::from_millis(1500);
/// Default extra random replication delay, uniform in `0..=jitter`
/// (`--jitter-ms`).
pub const DEFAULT_JITTER: Duration = Duration::from_millis(500);
/// Most numbered seed users accepted.
pub const MAX_USERS: usize = 1_000_000;

/// How to start a [`SampleCluster`]. Build with [`ClusterConfig::new`] and
/// adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Region codes, 1–64 chars of `[A-Za-z0-9._-]`, distinct; one listener
    /// each, in this order (the order also drives the user seed).
    pub regions: Vec<String>,
    /// Address every listener binds to. Default `127.0.0.1`.
    pub listen_host: IpAddr,
    /// `0`: each region gets an ephemeral port. Otherwise region `i` listens
    /// on `base_port + i`. Default `0`.
    pub base_port: u16,
    /// Fixed part of the replication delay. Default 1.5 s.
    pub lag: Duration,
    /// Random extra replication delay, uniform in `0..=jitter`. Default 0.5 s.
    pub jitter: Duration,
    /// Number of numbered seed users (`user-0000`…). Default 1000.
    pub users: usize,
}

impl ClusterConfig {
    /// Defaults for everything but the regions.
    pub fn new<I, S>(regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClusterConfig {
            regions: regions.into_iter().map(Into::into).collect(),
            listen_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 0,
            lag: DEFAULT_LAG,
            jitter: DEFAULT_JITTER,
            users: DEFAULT_USERS,
        }
    }

    /// Sets the lag and jitter.
    pub fn with_lag(mut self, lag: Duration, jitter: Duration) -> Self {
        self.lag = lag;
        self.jitter = jitter;
        self
    }

    /// Checks the config; the error names the flag, the value and what is
    /// allowed.
    pub fn validate(&self) -> Result<(), Error> {
        if self.regions.is_empty() {
            return Err(Error::config("--regions", "", "at least one region code"));
        }
        for (i, r) in self.regions.iter().enumerate() {
            let ok = !r.is_empty()
                && r.len() <= 64
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(Error::config(
                    "--regions",
                    r,
                    "1-64 characters of [A-Za-z0-9._-]",
                ));
            }
            if self.regions[..i].contains(r) {
                return Err(Error::config("--regions", r, "each region code once"));
            }
        }
        if self.base_port != 0 {
            let last = usize::from(self.base_port) + self.regions.len() - 1;
            if last > usize::from(u16::MAX) {
                return Err(Error::config(
                    "--base-port",
                    &self.base_port.to_string(),
                    "0, or a port such that base + number of regions - 1 <= 65535",
                ));
            }
        }
        if self.users > MAX_USERS {
            return Err(Error::config(
                "--users",
                &self.users.to_string(),
                "at most 1000000",
            ));
        }
        Ok(())
    }
}

struct Region {
    state: RegionState,
    addr: SocketAddr,
    url: String,
}

/// The running regions of one sample app, each with its own listener and
/// store. Dropping it stops the listeners and drops undelivered
/// replication events; [`SampleCluster::shutdown`] also waits for the
/// listeners to close.
pub struct SampleCluster {
    regions: Vec<Region>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SampleCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.regions.iter().map(|r| (&*r.state.region, &r.url)))
            .finish()
    }
}

impl SampleCluster {
    /// Binds every region's listener, then starts serving. Must run inside
    /// a tokio runtime; returns once all listeners are bound.
    pub async fn start(config: ClusterConfig) -> Result<SampleCluster, Error> {
        config.validate()?;
        let (stop, stop_rx) = watch::channel(false);
        let stores: Vec<Arc<Store>> = config
            .regions
            .iter()
            .map(|r| Arc::new(Store::new(r.clone())))
            .collect();
        let replicator = Arc::new(Replicator::new(
            stores.clone(),
            config.lag,
            config.jitter,
            stop_rx.clone(),
        ));
        let users = Arc::new(Users::seed(&config.regions, config.users));

        let mut listeners = Vec::with_capacity(config.regions.len());
        for (i, region) in config.regions.iter().enumerate() {
            let port = if config.base_port == 0 {
                0
            } else {
                // In range: validate() checked base + len - 1 <= 65535.
                config
                    .base_port
                    .saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
            };
            let want = SocketAddr::new(config.listen_host, port);
            let listener = TcpListener::bind(want)
                .await
                .map_err(|source| Error::Bind {
                    region: region.clone(),
                    addr: want,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| Error::Bind {
                region: region.clone(),
                addr: want,
                source,
            })?;
            listeners.push((listener, addr));
        }

        let mut regions = Vec::with_capacity(listeners.len());
        let mut servers = Vec::with_capacity(listeners.len());
        for (i, ((listener, addr), store)) in listeners.into_iter().zip(stores).enumerate() {
            let state = RegionState {
                region: Arc::from(config.regions[i].as_str()),
                index: i,
                store,
                users: Arc::clone(&users),
                healthy: Arc::new(AtomicBool::new(true)),
                replicator: Arc::clone(&replicator),
                next_order: Arc::new(AtomicU64::new(0)),
            };
            let app = api::router(state.clone());
            let mut stop_rx = stop_rx.clone();
            let region = config.regions[i].clone();
            servers.push(tokio::spawn(async move {
                let shutdown = async move {
                    // Err means the cluster was dropped: stop as well.
                    let _stopped = stop_rx.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(region = %region, error = %e, "sample app listener failed");
                }
            }));
            regions.push(Region {
                state,
                addr,
                url: format!("http://{addr}"),
            });
        }
        tracing::debug!(regions = ?config.regions, "sample app started");
        Ok(SampleCluster {
            regions,
            stop,
            servers,
        })
    }

    fn region(&self, code: &str) -> Option<&Region> {
        self.regions.iter().find(|r| &*r.state.region == code)
    }

    /// Region codes, in configuration order.
    pub fn regions(&self) -> Vec<&str> {
        self.regions.iter().map(|r| &*r.state.region).collect()
    }

    /// Base URL of a region's app, `http://IP:PORT`.
    pub fn url(&self, region: &str) -> Option<&str> {
        self.region(region).map(|r| r.url.as_str())
    }

    /// Bound address of a region's listener.
    pub fn addr(&self, region: &str) -> Option<SocketAddr> {
        self.region(region).map(|r| r.addr)
    }

    /// The same numbers as the region's `GET /stats`.
    pub fn stats(&self, region: &str) -> Option<RegionStats> {
        self.region(region).map(|r| r.state.stats())
    }

    /// Switches a region's app healthy or not. Unhealthy: `GET /health` and
    /// every app endpoint answer 503 (`/stats` still answers). Returns false
    /// for an unknown region.
    pub fn set_healthy(&self, region: &str, healthy: bool) -> bool {
        match self.region(region) {
            Some(r) => {
                r.state.healthy.store(healthy, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// A region's store, for tests that inspect it or deliver events by hand.
    pub fn store(&self, region: &str) -> Option<Arc<Store>> {
        self.region(region).map(|r| Arc::clone(&r.state.store))
    }

    /// Waits until no replication event is in flight, at most `timeout`.
    /// Returns whether replication went quiet.
    pub async fn wait_replicated(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending: u64 = self
                .regions
                .iter()
                .map(|r| r.state.store.counters().pending_replication)
                .sum();
            if pending == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the listeners (open connections get up to 5 s to finish) and
    /// drops undelivered replication events.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for server in std::mem::take(&mut self.servers) {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SampleCluster {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
