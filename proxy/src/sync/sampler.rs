//! The load sampler: every [`crate::load::SAMPLE_EVERY`], one step of the
//! smoothed load, and the load and staleness gauges.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::State;

/// The load sampler, as a background service.
pub struct LoadSampler {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for LoadSampler {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::until_shutdown(run(&self.state), shutdown).await;
    }
}

async fn run(state: &State) {
    let alpha = crate::load::SAMPLE_EVERY.as_secs_f64()
        / state.cfg.discovery.heartbeat_interval.as_secs_f64();
    let mut tick = tokio::time::interval(crate::load::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        state.load.sample(alpha);
        state.metrics.load.set(state.load.value());
        state
            .metrics
            .registry_staleness_seconds
            .set(state.registry.staleness().as_secs_f64());
    }
}
