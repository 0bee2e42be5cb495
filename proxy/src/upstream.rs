//! The local upstream pool: Pingora load balancing (round robin) with an
//! active HTTP health check on the configured path.

use std::sync::Arc;

use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::config::UpstreamConfig;

pub fn build(cfg: &UpstreamConfig) -> std::io::Result<LoadBalancer<RoundRobin>> {
    let mut lb =
        LoadBalancer::<RoundRobin>::try_from_iter(cfg.addresses.iter().map(|a| a.to_string()))?;
    let mut hc = HttpHealthCheck::new("localhost", false);
    let mut req = RequestHeader::build("GET", cfg.health_path.as_bytes(), None)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    req.insert_header("host", "localhost")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    req.insert_header("user-agent", "tether-health-check")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    hc.req = req;
    // A slow answer on a busy machine is not a dead upstream: generous
    // timeouts, and two failures in a row before one is taken out (one
    // success puts it back).
    hc.peer_template.options.connection_timeout = Some(cfg.connect_timeout);
    hc.peer_template.options.read_timeout =
        Some(cfg.health_interval.max(std::time::Duration::from_secs(1)));
    hc.consecutive_success = 1;
    hc.consecutive_failure = 2;
    lb.set_health_check(Box::new(hc));
    lb.health_check_frequency = Some(cfg.health_interval);
    lb.parallel_health_check = true;
    Ok(lb)
}

/// A healthy upstream for this request, if any.
pub fn select(lb: &Arc<LoadBalancer<RoundRobin>>) -> Option<Backend> {
    lb.select(b"", 256)
}
