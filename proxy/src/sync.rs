//! Registry sync: the heartbeat sender, the registry poller and the load
//! sampler, run as one Pingora background service.
//!
//! The registry lives in an `ArcSwap<RegistryView>`: the request path reads
//! it with one `load()` and never waits on discovery. A new snapshot is
//! checked ([`tether_protocol::registry::check_snapshot`]) before it is
//! swapped in; when discovery is down, slow or sends something implausible
//! the proxy keeps the last good snapshot, and this server always counts as
//! live for its own locked clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tether_protocol::registry::{check_snapshot, Registry, SnapshotError};
use tether_protocol::wire::{Heartbeat, ServerEntry, Snapshot};

use crate::State;

/// The registry as the request path sees it.
#[derive(Debug, Default)]
pub struct RegistryView {
    pub registry: Registry,
    /// Socket addresses of peer proxies for forward mode, resolved when
    /// the snapshot arrived (never from client input).
    pub peers: HashMap<String, SocketAddr>,
}

/// The hot-swapped registry plus bookkeeping for staleness.
pub struct RegistryState {
    current: ArcSwap<RegistryView>,
    started: Instant,
    /// Milliseconds after `started` when discovery last confirmed the
    /// snapshot (a 200 accepted or a 304); u64::MAX = never.
    last_contact_ms: AtomicU64,
}

impl RegistryState {
    pub fn new(initial: RegistryView) -> Self {
        RegistryState {
            current: ArcSwap::from_pointee(initial),
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The current view: one atomic load, no lock.
    pub fn load(&self) -> arc_swap::Guard<Arc<RegistryView>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<RegistryView> {
        self.current.load_full()
    }

    /// Replaces the view; used by the poller and once at start-up.
    pub fn store_initial(&self, view: RegistryView) {
        self.store(view);
    }

    fn store(&self, view: RegistryView) {
        self.current.store(Arc::new(view));
    }

    fn mark_contact(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_contact_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since discovery last confirmed the snapshot; since start-up
    /// when it never has.
    pub fn staleness(&self) -> Duration {
        let now = self.started.elapsed();
        match self.last_contact_ms.load(Ordering::Relaxed) {
            u64::MAX => now,
            ms => now.saturating_sub(Duration::from_millis(ms)),
        }
    }
}

/// Builds a view from a snapshot, adding this server if discovery does not
/// list it (yet): a proxy always knows itself.
pub fn build_view(state: &State, mut snapshot: Snapshot, resolve_peers: bool) -> RegistryView {
    let me = &state.cfg.server;
    if !snapshot.servers.iter().any(|s| s.id == me.id) {
        snapshot.servers.push(self_entry(state));
    }
    let peers = if resolve_peers {
        snapshot
            .servers
            .iter()
            .filter(|s| s.id != me.id)
            .filter_map(|s| peer_addr(&s.url).map(|a| (s.id.clone(), a)))
            .collect()
    } else {
        HashMap::new()
    };
    RegistryView {
        registry: Registry::new(snapshot),
        peers,
    }
}

pub fn self_entry(state: &State) -> ServerEntry {
    let me = &state.cfg.server;
    ServerEntry {
        id: me.id.clone(),
        region: me.region.clone(),
        url: me.public_url.clone(),
        load: state.load.value(),
        healthy: state.upstream_healthy(),
        draining: false,
        last_seen_ms: 0,
    }
}

/// `http://127.0.0.1:8082` → 127.0.0.1:8082. Host names are resolved with
/// the system resolver (blocking, but only in the background poller).
///
/// Only `http://` peers get an address: forward mode speaks plain HTTP to
/// peers, so a lock on an `https://` peer is answered with a relock hint
/// (421) even in forward mode.
fn peer_addr(url: &str) -> Option<SocketAddr> {
    let u = url::Url::parse(url).ok()?;
    if u.scheme() != "http" {
        return None;
    }
    let host = u.host_str()?;
    let port = u.port_or_known_default()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    use std::net::ToSocketAddrs;
    (host, port).to_socket_addrs().ok()?.next()
}

/// Exponential backoff with full jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // Full jitter in [d/2, d]: spreads proxies that failed together.
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

pub struct SyncService {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = &self.state;
        tokio::select! {
            _ = heartbeat_loop(state) => {}
            _ = poll_loop(state) => {}
            _ = sample_loop(state) => {}
            _ = keyring_loop(state) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reloads the key ring when its file changes (checked every second) or
/// on SIGHUP. Installing the SIGHUP handler also keeps a stray SIGHUP from
/// killing the proxy.
async fn keyring_loop(state: &State) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); the key ring is still reloaded when its file changes");
            None
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let trigger = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = tick.tick() => "file check",
                _ = h.recv() => "SIGHUP",
            },
            None => {
                tick.tick().await;
                "file check"
            }
        };
        state.hop_key.prune(crate::tokens::unix_now());
        match state.tokens.reload() {
            Ok(crate::keys::Reload::Reloaded) => {
                tracing::info!(trigger, "key ring reloaded");
                state
                    .metrics
                    .keyring_reloads
                    .with_label_values(&["reloaded"])
                    .inc();
            }
            Ok(crate::keys::Reload::Unchanged) => {}
            Err(e) => {
                tracing::error!(
                    trigger,
                    "key ring not reloaded, keeping the current keys: {e}"
                );
                state
                    .metrics
                    .keyring_reloads
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }
}

async fn sample_loop(state: &State) {
    let alpha = crate::load::SAMPLE_EVERY.as_secs_f64()
        / state.cfg.discovery.heartbeat_interval.as_secs_f64();
    let mut tick = tokio::time::interval(crate::load::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        state.load.sample(alpha);
        state.metrics.load.set(state.load.value());
        state
            .metrics
            .registry_staleness_ms
            .set(state.registry.staleness().as_millis() as i64);
    }
}

async fn heartbeat_loop(state: &State) {
    let d = &state.cfg.discovery;
    let url = format!("{}/v1/heartbeat", d.url);
    let auth = format!("Bearer {}", d.cluster_token);
    let mut backoff = Backoff::new(Duration::from_millis(200), d.heartbeat_interval);
    loop {
        let me = &state.cfg.server;
        let view = state.registry.load();
        let draining = view.registry.get(&me.id).is_some_and(|s| s.draining);
        drop(view);
        let hb = Heartbeat {
            id: me.id.clone(),
            region: me.region.clone(),
            url: me.public_url.clone(),
            load: state.load.value(),
            healthy: state.upstream_healthy(),
            draining,
        };
        let result = state
            .discovery_http
            .post(&url)
            .header("authorization", &auth)
            .timeout(d.heartbeat_interval.max(Duration::from_millis(500)))
            .json(&hb)
            .send()
            .await;
        let wait = match result {
            Ok(r) if r.status().is_success() => {
                state.metrics.heartbeats_sent.inc();
                backoff.reset();
                // ±10% so proxies started together drift apart.
                d.heartbeat_interval
                    .mul_f64(0.9 + 0.2 * rand::random::<f64>())
            }
            Ok(r) => {
                state.metrics.heartbeat_failures.inc();
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(%status, body = %body.chars().take(300).collect::<String>(), "discovery refused the heartbeat");
                backoff.next()
            }
            Err(e) => {
                state.metrics.heartbeat_failures.inc();
                tracing::warn!("heartbeat to {url} failed: {e}");
                backoff.next()
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Outcome of offering a snapshot.
enum Offer {
    Accepted,
    Rejected(SnapshotError),
}

async fn poll_loop(state: &State) {
    let d = &state.cfg.discovery;
    let mut etag: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut implausible_since: Option<Instant> = None;
    let resolve = state.cfg.routing.foreign_lock == crate::config::ForeignLock::Forward;
    loop {
        let started = Instant::now();
        let wait = if etag.is_some() {
            d.poll_wait.as_secs()
        } else {
            0
        };
        let url = format!("{}/v1/servers?wait={wait}", d.url);
        let mut req = state
            .discovery_http
            .get(&url)
            .timeout(Duration::from_secs(wait) + Duration::from_secs(5));
        if let Some(tag) = &etag {
            req = req.header("if-none-match", tag);
        }
        let failed = match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {
                state.registry.mark_contact();
                false
            }
            Ok(r) if r.status().is_success() => {
                let tag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match r
                    .bytes()
                    .await
                    .map(|b| serde_json::from_slice::<Snapshot>(&b))
                {
                    Ok(Ok(snapshot)) => {
                        match offer(state, snapshot, &mut implausible_since, resolve) {
                            Offer::Accepted => {
                                etag = tag;
                                state.registry.mark_contact();
                                false
                            }
                            Offer::Rejected(e) => {
                                tracing::warn!("keeping the last good registry: discovery sent an implausible snapshot: {e}");
                                // Ask again without the ETag next time, after a pause.
                                etag = None;
                                true
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("discovery sent a snapshot that is not valid JSON: {e}");
                        state
                            .metrics
                            .snapshots_rejected
                            .with_label_values(&["malformed"])
                            .inc();
                        true
                    }
                    Err(e) => {
                        tracing::warn!("reading the snapshot failed: {e}");
                        true
                    }
                }
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "discovery did not serve the registry");
                true
            }
            Err(e) => {
                tracing::warn!("registry poll to {url} failed: {e}");
                true
            }
        };
        if failed {
            state.metrics.poll_failures.inc();
            tokio::time::sleep(backoff.next()).await;
        } else {
            backoff.reset();
        }
        let next = started + d.min_poll_interval;
        tokio::time::sleep_until(next.into()).await;
    }
}

fn offer(
    state: &State,
    snapshot: Snapshot,
    implausible_since: &mut Option<Instant>,
    resolve: bool,
) -> Offer {
    let current = state.registry.load_full();
    if let Err(e) = check_snapshot(&current.registry, &snapshot) {
        let label = match &e {
            SnapshotError::BadEntry { .. } => "bad_entry",
            SnapshotError::DuplicateId(_) => "duplicate_id",
            SnapshotError::VersionWentBack { .. } => "version_went_back",
            SnapshotError::Empty { .. } => "empty",
            SnapshotError::MassEviction { .. } => "mass_eviction",
        };
        state
            .metrics
            .snapshots_rejected
            .with_label_values(&[label])
            .inc();
        // Malformed entries are never believed. An implausible but
        // well-formed registry that discovery keeps reporting for long
        // enough is the truth (a real mass outage, a discovery restart).
        let persistent = matches!(
            e,
            SnapshotError::Empty { .. }
                | SnapshotError::MassEviction { .. }
                | SnapshotError::VersionWentBack { .. }
        );
        let since = *implausible_since.get_or_insert_with(Instant::now);
        if !(persistent && since.elapsed() >= state.cfg.discovery.implausible_accept_after) {
            return Offer::Rejected(e);
        }
        tracing::warn!(
            "accepting a registry change discovery has reported for {:?}: {e}",
            since.elapsed()
        );
    }
    *implausible_since = None;
    let version = snapshot.version;
    let view = build_view(state, snapshot, resolve);
    state.metrics.registry_version.set(version as i64);
    state.metrics.live_servers.reset();
    for (region, n) in view.registry.live_by_region() {
        state
            .metrics
            .live_servers
            .with_label_values(&[region])
            .set(n as i64);
    }
    state.registry.store(view);
    Offer::Accepted
}
