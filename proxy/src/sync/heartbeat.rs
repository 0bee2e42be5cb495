//! The heartbeat sender: this server's id, region, URL, load and health
//! to discovery every `discovery.heartbeat_interval_ms` (±10%), with
//! backoff while discovery does not take them, to the discovery node in
//! use ([`crate::discovery_nodes::DiscoveryNodes`]; a node that does not answer is left
//! for the next).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

use tether_protocol::wire::Heartbeat;

use super::Backoff;
use crate::state::State;

/// The heartbeat sender, as a background service.
pub struct Heartbeats {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for Heartbeats {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::until_shutdown(run(&self.state), shutdown).await;
    }
}

async fn run(state: &State) {
    let d = &state.cfg.discovery;
    let auth = format!("Bearer {}", d.cluster_token);
    let mut backoff = Backoff::new(Duration::from_millis(200), d.heartbeat_interval);
    loop {
        let me = &state.cfg.server;
        // Only what this process decided (the shutdown grace): an
        // operator's drain is held by discovery, and echoing the snapshot's
        // flag back would make it impossible to undo.
        let draining = state.lifecycle.shutting_down();
        let hb = Heartbeat {
            id: me.id.clone(),
            region: me.region.clone(),
            url: me.public_url.clone(),
            load: state.load.value(),
            healthy: state.upstream_healthy(),
            draining,
        };
        let (node, base) = state.discovery.current();
        let url = format!("{base}/v1/heartbeat");
        let result = state
            .discovery_http
            .post(&url)
            .header("authorization", &auth)
            .timeout(d.heartbeat_interval.max(Duration::from_millis(500)))
            .json(&hb)
            .send()
            .await;
        match crate::discovery_nodes::node_failed(&result) {
            None => state.discovery.answered(),
            Some(why) => state.discovery.failed(node, &why),
        }
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
