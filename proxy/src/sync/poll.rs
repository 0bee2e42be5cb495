//! The registry poller: long-polls the discovery node in use
//! (`GET /v1/servers?since=<held version>&wait=…` with the ETag) for what
//! changed, applies the delta to the registry it holds, offers the result
//! to the [`Gate`], and swaps in what passes. The first poll, and the one
//! after a refused answer, fetch the whole registry. While discovery is
//! down or refused, the last good registry stays; a node that does not
//! answer is left for the next ([`crate::discovery_nodes::DiscoveryNodes`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tether_protocol::delta::Delta;
use tether_protocol::registry::{Registry, SnapshotError};
use tether_protocol::wire::Snapshot;

use super::Backoff;
use crate::config::ForeignLock;
use crate::metrics::SnapshotRejected;
use crate::registry::{Gate, Passage, RegistryView};
use crate::state::State;

/// The registry poller, as a background service.
pub struct Poller {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for Poller {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::until_shutdown(run(&self.state), shutdown).await;
    }
}

async fn run(state: &State) {
    let d = &state.cfg.discovery;
    let nodes = &state.discovery;
    // The registry as discovery last sent it and the gate let it in
    // (without this server added), its version the `since` of the next
    // poll, and its ETag. Both stay across a switch of nodes.
    let mut held: Option<Snapshot> = None;
    // What discovery last sent and the proxy accepted: the gate judges a
    // new snapshot against this, not against the view (which always holds
    // this server itself, so a clean start would look like "1 server known,
    // now none").
    let mut known = Registry::new(Snapshot::default());
    let mut etag: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut gate = Gate::new(d.implausible_accept_after);
    let resolve = state.cfg.routing.foreign_lock == ForeignLock::Forward;
    loop {
        let started = Instant::now();
        let (node, base) = nodes.current();
        let (url, wait) = match &held {
            Some(h) => {
                let wait = d.poll_wait.as_secs();
                let url = format!("{base}/v1/servers?since={}&wait={wait}", h.version);
                (url, wait)
            }
            None => (format!("{base}/v1/servers?wait=0"), 0),
        };
        let mut req = state
            .discovery_http
            .get(&url)
            .timeout(Duration::from_secs(wait) + Duration::from_secs(5));
        if let Some(tag) = etag.as_ref().filter(|_| held.is_some()) {
            req = req.header("if-none-match", tag);
        }
        let result = req.send().await;
        if let Some(why) = crate::discovery_nodes::node_failed(&result) {
            nodes.failed(node, &why);
        }
        let failed = match result {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {
                nodes.answered();
                state.registry.mark_contact();
                false
            }
            Ok(r) if r.status().is_success() => {
                nodes.answered();
                let tag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match r.bytes().await {
                    Ok(body) => {
                        state.discovery.poll_bytes.inc_by(body.len() as u64);
                        match next_snapshot(held.as_ref(), &body) {
                            Ok(next) => {
                                match offer(state, &mut gate, &mut known, next.clone(), resolve)
                                    .await
                                {
                                    Ok(()) => {
                                        held = Some(next);
                                        etag = tag;
                                        state.registry.mark_contact();
                                        false
                                    }
                                    Err(e) => {
                                        tracing::warn!("keeping the last good registry: discovery sent an implausible snapshot: {e}");
                                        // Ask for the whole registry next time,
                                        // after a pause.
                                        held = None;
                                        etag = None;
                                        true
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "discovery sent a registry answer that is not valid JSON: {e}"
                                );
                                state.metrics.snapshot_rejected(SnapshotRejected::Malformed);
                                held = None;
                                etag = None;
                                true
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("reading the registry answer from {base} failed: {e}");
                        true
                    }
                }
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "discovery at {base} did not serve the registry");
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

/// The registry after a poll answer: with nothing held, `body` is a full
/// listing; otherwise it is a `?since=` answer
/// ([`tether_protocol::delta::Delta`]), applied to a copy of what is held
/// (`"full": true` replaces it).
fn next_snapshot(held: Option<&Snapshot>, body: &[u8]) -> Result<Snapshot, serde_json::Error> {
    match held {
        None => {
            // Deltas are applied by id (binary search): keep the listing
            // sorted, whatever order a discovery node sent it in.
            let mut full: Snapshot = serde_json::from_slice(body)?;
            full.servers.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(full)
        }
        Some(h) => {
            let delta: Delta = serde_json::from_slice(body)?;
            let mut next = h.clone();
            delta.apply(&mut next);
            Ok(next)
        }
    }
}

/// Offers a snapshot to the gate; swaps it in when it passes.
async fn offer(
    state: &State,
    gate: &mut Gate,
    known: &mut Registry,
    snapshot: Snapshot,
    resolve: bool,
) -> Result<(), SnapshotError> {
    match gate.judge(known, &snapshot, Instant::now()) {
        Passage::Pass => {}
        Passage::Believed {
            error,
            reported_for,
        } => {
            state
                .metrics
                .snapshot_rejected(SnapshotRejected::from(&error));
            tracing::warn!(
                "accepting a registry change discovery has reported for {reported_for:?}: {error}"
            );
        }
        Passage::Refused(error) => {
            state
                .metrics
                .snapshot_rejected(SnapshotRejected::from(&error));
            return Err(error);
        }
    }
    *known = Registry::new(snapshot.clone());
    let me = &state.cfg.server.id;
    let peers = if resolve {
        peer_addrs(&snapshot, me).await
    } else {
        HashMap::new()
    };
    let version = snapshot.version;
    let view = RegistryView::new(snapshot, me, || state.self_entry(), peers);
    state.metrics.registry_version.set(version as i64);
    state.metrics.live_servers(view.registry.live_by_region());
    state.registry.store(view);
    Ok(())
}

/// The forward-mode addresses of the peers in `snapshot` (all but `me`).
async fn peer_addrs(snapshot: &Snapshot, me: &str) -> HashMap<String, SocketAddr> {
    let mut peers = HashMap::new();
    for s in snapshot.servers.iter().filter(|s| s.id != me) {
        if let Some(addr) = peer_addr(&s.url).await {
            peers.insert(s.id.clone(), addr);
        }
    }
    peers
}

/// `http://127.0.0.1:8082` → 127.0.0.1:8082. Host names are resolved with
/// the system resolver, off the async threads (`lookup_host`).
///
/// Only `http://` peers get an address: forward mode speaks plain HTTP to
/// peers, so a lock on an `https://` peer is answered with a relock hint
/// (421) even in forward mode.
async fn peer_addr(url: &str) -> Option<SocketAddr> {
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
    let mut addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    addrs.next()
}
