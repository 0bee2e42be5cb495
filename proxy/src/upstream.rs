//! The local upstream pool: Pingora's load balancer with an active HTTP
//! health check on the configured path, and a round-robin pick among the
//! healthy backends ([`select`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer};

use crate::config::UpstreamConfig;
use crate::resolve::{ResolveMetrics, Resolver};

/// The pool, and the resolver's series (registered by the caller once the
/// proxy's metrics exist). Host names among the addresses are resolved
/// here once, then again every `resolve_interval` in the pool's
/// background service (`crate::resolve`).
pub fn build(cfg: &UpstreamConfig) -> std::io::Result<(LoadBalancer<RoundRobin>, ResolveMetrics)> {
    let resolver = Resolver::new(cfg.addresses.clone());
    let resolve_metrics = resolver.metrics.clone();
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(resolver)));
    // The first update takes the start-up resolution: no await inside.
    futures::executor::block_on(lb.update()).map_err(|e| std::io::Error::other(e.to_string()))?;
    if cfg.addresses.iter().any(|a| a.is_name()) {
        lb.update_frequency = Some(cfg.resolve_interval);
    }
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
    Ok((lb, resolve_metrics))
}

/// A healthy upstream for this request, if any: round robin over the
/// pool, skipping backends whose health check fails (or that are
/// disabled), the choice `LoadBalancer::select` makes with `RoundRobin`.
/// Done here because that `select` records the backends it tried in a
/// fresh `HashSet` on every call: a heap allocation per request. One
/// counter for the process (Pingora keeps one per pool; a proxy has one
/// pool).
pub fn select(lb: &Arc<LoadBalancer<RoundRobin>>) -> Option<Backend> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let backends = lb.backends();
    // The current members (an `Arc` clone, no copy).
    let all = backends.get_backend();
    let n = all.len();
    if n == 0 {
        return None;
    }
    let start = NEXT.fetch_add(1, Ordering::Relaxed) % n;
    all.iter()
        .cycle()
        .skip(start)
        .take(n)
        .find(|b| backends.ready(b))
        .cloned()
}
