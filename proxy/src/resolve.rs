//! Upstreams by name (docs/proxy.md, "Upstreams by name"):
//! `upstream.addresses` may name hosts (`"app.internal:3001"`), as
//! containers, compose and Kubernetes do. Names are resolved off the
//! request path: once at start, then every `upstream.resolve_interval_ms`
//! by the upstream pool's background service (Pingora's service discovery
//! hook). When a name does not resolve, its last good addresses are kept,
//! with a warning and `upstream_resolve_failures_total`; the pool's size is
//! `upstream_addresses`.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use prometheus::{IntCounter, IntGauge};

/// One entry of `upstream.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Ip(a) => write!(f, "{a}"),
            UpstreamAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl UpstreamAddr {
    /// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` with a DNS host name
    /// (letters, digits, `-` and `.`, labels of 1–63 characters).
    pub fn parse(v: &str) -> Option<UpstreamAddr> {
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Some(UpstreamAddr::Ip(a));
        }
        let (host, port) = v.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return None;
        }
        Some(UpstreamAddr::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub fn is_name(&self) -> bool {
        matches!(self, UpstreamAddr::Name { .. })
    }
}

/// The resolver's series, registered with the proxy's metrics once they
/// exist (the pool is built first).
#[derive(Clone)]
pub struct ResolveMetrics {
    pub failures: IntCounter,
    pub addresses: IntGauge,
}

impl ResolveMetrics {
    fn new() -> ResolveMetrics {
        ResolveMetrics {
            failures: IntCounter::new(
                "upstream_resolve_failures_total",
                "Upstream host names that did not resolve (the last good addresses were kept)",
            )
            .expect("static metric"),
            addresses: IntGauge::new(
                "upstream_addresses",
                "Upstream addresses in the pool, host names resolved",
            )
            .expect("static metric"),
        }
    }
}

/// Pingora service discovery over `upstream.addresses`.
pub struct Resolver {
    entries: Vec<UpstreamAddr>,
    /// Per host name, the last addresses it resolved to.
    last_good: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// The pool's first update (at build, before any runtime) takes the
    /// start-up resolution as it is.
    first: AtomicBool,
    pub metrics: ResolveMetrics,
}

impl Resolver {
    /// Resolves every name once, blocking (at start, before serving): the
    /// pool starts full. A name that does not resolve yet starts empty
    /// and is tried again at every interval.
    pub fn new(entries: Vec<UpstreamAddr>) -> Resolver {
        let metrics = ResolveMetrics::new();
        let mut last_good = HashMap::new();
        for e in &entries {
            if let UpstreamAddr::Name { host, port } = e {
                match (host.as_str(), *port).to_socket_addrs() {
                    Ok(addrs) => {
                        last_good.insert(e.to_string(), addrs.collect());
                    }
                    Err(err) => {
                        metrics.failures.inc();
                        tracing::warn!("upstream {e} does not resolve yet: {err}");
                    }
                }
            }
        }
        Resolver {
            entries,
            last_good: Mutex::new(last_good),
            first: AtomicBool::new(true),
            metrics,
        }
    }

    /// Every address now: IPs as given, names as last resolved.
    fn current(&self) -> BTreeSet<Backend> {
        let last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        let mut set = BTreeSet::new();
        for e in &self.entries {
            let addrs = match e {
                UpstreamAddr::Ip(a) => vec![*a],
                UpstreamAddr::Name { .. } => last.get(&e.to_string()).cloned().unwrap_or_default(),
            };
            for a in addrs {
                set.insert(Backend {
                    addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(a),
                    weight: 1,
                    ext: http::Extensions::new(),
                });
            }
        }
        self.metrics.addresses.set(set.len() as i64);
        set
    }

    /// Resolves the names again; a name that fails keeps its last good
    /// addresses.
    async fn refresh(&self) {
        for e in &self.entries {
            let UpstreamAddr::Name { host, port } = e else {
                continue;
            };
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
                    let key = e.to_string();
                    if last.get(&key) != Some(&addrs) {
                        tracing::info!(upstream = %e, ?addrs, "upstream name resolved");
                        last.insert(key, addrs);
                    }
                }
                Err(err) => {
                    self.metrics.failures.inc();
                    tracing::warn!(
                        "upstream {e} did not resolve ({err}); keeping its last good addresses"
                    );
                }
            }
        }
    }
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if !self.first.swap(false, Ordering::Relaxed) {
            self.refresh().await;
        }
        Ok((self.current(), HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            UpstreamAddr::parse("127.0.0.1:3001"),
            Some(UpstreamAddr::Ip("127.0.0.1:3001".parse().unwrap()))
        );
        assert_eq!(
            UpstreamAddr::parse("[::1]:3001"),
            Some(UpstreamAddr::Ip("[::1]:3001".parse().unwrap()))
        );
        assert_eq!(
            UpstreamAddr::parse("App.internal:3001"),
            Some(UpstreamAddr::Name {
                host: "app.internal".into(),
                port: 3001
            })
        );
        for bad in [
            "nope",
            "app:",
            "app:0",
            "app:70000",
            ":3001",
            "a..b:1",
            "-a:1",
            "a_b:1",
            "http://a:1",
        ] {
            assert_eq!(UpstreamAddr::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let r = Resolver::new(vec![
            UpstreamAddr::parse("localhost:3001").unwrap(),
            UpstreamAddr::parse("127.0.0.9:1").unwrap(),
        ]);
        let first = r.current();
        assert!(first.len() >= 2, "{first:?}");
        // Pretend the name resolved earlier to something else and now
        // fails: swap in a name that cannot resolve under the same key.
        let bad = Resolver {
            entries: vec![UpstreamAddr::Name {
                host: "no-such-host.invalid".into(),
                port: 1,
            }],
            last_good: Mutex::new(HashMap::from([(
                "no-such-host.invalid:1".to_owned(),
                vec!["10.1.2.3:1".parse().unwrap()],
            )])),
            first: AtomicBool::new(false),
            metrics: ResolveMetrics::new(),
        };
        let (set, _) = bad.discover().await.unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(bad.metrics.failures.get(), 1);
        assert_eq!(bad.metrics.addresses.get(), 1);
    }
}
