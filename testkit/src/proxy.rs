//! The proxy role: `tether proxy` with the shipped `conf/proxy.<region>.toml`
//! edited for a test (ports, upstreams, discovery, short timers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::Cluster;
use crate::conf::Conf;
use crate::net::{free_port, wait_for_port};
use crate::poll::eventually;
use crate::proc::{Proc, Spawn};
use crate::upstream::Upstream;

pub struct ProxyBuilder<'c> {
    cluster: &'c Cluster,
    id: String,
    region: String,
    upstreams: Vec<SocketAddr>,
    foreign_lock: &'static str,
    public_prefixes: Vec<String>,
    access_ttl: u64,
    routing_extra: String,
    tokens_extra: String,
    limits: String,
    idempotency: String,
    cors: String,
    server_extra: String,
    tls: Option<(PathBuf, PathBuf)>,
    /// Extra TOML lines per table, for tables the builder has no method for.
    sections: Vec<(String, String)>,
    discovery_urls: Option<Vec<String>>,
}

/// A running proxy process.
pub struct Proxy {
    pub id: String,
    pub region: String,
    pub url: String,
    pub addr: SocketAddr,
    pub admin: String,
    pub config: PathBuf,
    pub proc: Proc,
}

impl Cluster {
    /// A proxy to configure and start (see [`ProxyBuilder`]).
    pub fn proxy(&self, id: &str, region: &str) -> ProxyBuilder<'_> {
        ProxyBuilder::new(self, id, region)
    }
}

impl<'c> ProxyBuilder<'c> {
    pub(crate) fn new(cluster: &'c Cluster, id: &str, region: &str) -> Self {
        ProxyBuilder {
            cluster,
            id: id.to_owned(),
            region: region.to_owned(),
            upstreams: Vec::new(),
            foreign_lock: "redirect",
            public_prefixes: vec!["/public/".to_owned()],
            access_ttl: 120,
            routing_extra: String::new(),
            tokens_extra: String::new(),
            limits: String::new(),
            idempotency: String::new(),
            cors: String::new(),
            server_extra: String::new(),
            tls: None,
            sections: Vec::new(),
            discovery_urls: None,
        }
    }

    /// Extra TOML lines for `table` (e.g. `"log"`, `"access = \"on\""`),
    /// merged last.
    pub fn section(mut self, table: &str, toml: &str) -> Self {
        self.sections.push((table.to_owned(), toml.to_owned()));
        self
    }

    pub fn upstream(mut self, app: &Upstream) -> Self {
        self.upstreams.push(app.addr);
        self
    }

    pub fn upstream_addr(mut self, addr: SocketAddr) -> Self {
        self.upstreams.push(addr);
        self
    }

    pub fn forward(mut self) -> Self {
        self.foreign_lock = "forward";
        self
    }

    pub fn access_ttl(mut self, secs: u64) -> Self {
        self.access_ttl = secs;
        self
    }

    /// Extra TOML lines for the `[tokens]` table.
    pub fn tokens_extra(mut self, toml: &str) -> Self {
        self.tokens_extra.push_str(toml);
        self.tokens_extra.push('\n');
        self
    }

    /// Extra TOML lines for the `[routing]` table.
    pub fn routing_extra(mut self, toml: &str) -> Self {
        self.routing_extra.push_str(toml);
        self.routing_extra.push('\n');
        self
    }

    /// Extra TOML lines for the `[server]` table (e.g. the shutdown keys).
    pub fn server_extra(mut self, toml: &str) -> Self {
        self.server_extra.push_str(toml);
        self.server_extra.push('\n');
        self
    }

    /// TOML lines for the `[limits]` table (otherwise empty: defaults).
    pub fn limits(mut self, toml: &str) -> Self {
        self.limits.push_str(toml);
        self.limits.push('\n');
        self
    }

    /// TOML lines for the `[idempotency]` table (otherwise absent: the
    /// default, on with the memory store),
    /// e.g. `enabled = true` and `store = { kind = "redis", url = "..." }`.
    pub fn idempotency(mut self, toml: &str) -> Self {
        self.idempotency.push_str(toml);
        self.idempotency.push('\n');
        self
    }

    /// TOML lines for the `[cors]` table (otherwise none: CORS off).
    pub fn cors(mut self, toml: &str) -> Self {
        self.cors.push_str(toml);
        self.cors.push('\n');
        self
    }

    /// `discovery.urls` (in this order) instead of `discovery.url` = the
    /// cluster's discovery.
    pub fn discovery_urls(mut self, urls: &[&str]) -> Self {
        self.discovery_urls = Some(urls.iter().map(|u| (*u).to_owned()).collect());
        self
    }

    /// Serve HTTPS with this certificate chain and key; the proxy's `url`
    /// and public URL become `https://`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// The config: the shipped `conf/proxy.<region>.toml` (the `eu` one
    /// for other regions) with the keys a test sets; keys a test does not
    /// set are removed so their defaults apply.
    pub fn conf(&self, port: u16, admin_port: u16) -> Conf {
        let t = self.cluster.timing;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut c = Conf::proxy_or_eu(&self.region);
        c.retain("server", &[])
            .set("server", "id", self.id.as_str())
            .set("server", "region", self.region.as_str())
            .set(
                "server",
                "public_url",
                format!("{scheme}://127.0.0.1:{port}"),
            )
            .set("server", "listen", format!("127.0.0.1:{port}"))
            .set("server", "admin_listen", format!("127.0.0.1:{admin_port}"))
            .set("server", "worker_threads", 1i64)
            .merge("server", &self.server_extra);
        if let Some((cert, key)) = &self.tls {
            c.set("server", "tls_cert_file", cert.to_string_lossy().as_ref())
                .set("server", "tls_key_file", key.to_string_lossy().as_ref());
        }
        let upstreams: Vec<String> = self.upstreams.iter().map(ToString::to_string).collect();
        c.retain("upstream", &["health_path"])
            .set("upstream", "addresses", upstreams)
            .set(
                "upstream",
                "health_interval_ms",
                t.health_interval_ms as i64,
            )
            .set("upstream", "connect_timeout_ms", 500i64)
            .set("upstream", "read_timeout_ms", 5000i64);
        c.retain("discovery", &[]);
        match &self.discovery_urls {
            Some(urls) => c.set("discovery", "urls", urls.clone()),
            None => c.set("discovery", "url", self.cluster.discovery_url()),
        };
        c.set("discovery", "cluster_token_file", "cluster.token")
            .set("discovery", "heartbeat_interval_ms", t.heartbeat_ms as i64)
            .set("discovery", "poll_wait_seconds", 5i64)
            .set("discovery", "min_poll_interval_ms", 50i64)
            .set("discovery", "implausible_accept_after_seconds", 3i64);
        c.retain("tokens", &[])
            .set("tokens", "issuer", "tether-test")
            .set("tokens", "audience", "tether-tests")
            .set("tokens", "access_ttl_seconds", self.access_ttl as i64)
            .set("tokens", "refresh_ttl_days", 7i64)
            .set("tokens", "leeway_seconds", 2i64)
            .set("tokens", "keyring_file", "keyring.toml")
            .merge("tokens", &self.tokens_extra);
        c.retain("login", &["upstream_path", "subject", "home_region"]);
        c.retain("routing", &[])
            .set("routing", "public_prefixes", self.public_prefixes.clone())
            .set("routing", "foreign_lock", self.foreign_lock)
            .set("routing", "probe_timeout_ms", 300i64)
            .merge("routing", &self.routing_extra);
        c.clear("limits").merge("limits", &self.limits);
        if !self.idempotency.is_empty() {
            c.merge("idempotency", &self.idempotency);
        }
        if !self.cors.is_empty() {
            c.clear("cors").merge("cors", &self.cors);
        }
        for (table, lines) in &self.sections {
            c.merge(table, lines);
        }
        c
    }

    /// Writes the config and returns its path, without starting anything.
    pub fn write_config(&self, port: u16, admin_port: u16) -> PathBuf {
        self.conf(port, admin_port)
            .write(&self.cluster.path(&format!("proxy.{}.toml", self.id)))
            .expect("write proxy config")
    }

    /// Starts the proxy process and waits until it listens and its
    /// upstream passes a health check.
    pub async fn start(self) -> Proxy {
        self.start_on(free_port(), true).await
    }

    /// Starts on `port`; waits for a healthy upstream when `wait_healthy`.
    pub async fn start_on(self, port: u16, wait_healthy: bool) -> Proxy {
        let admin_port = free_port();
        let config = self.write_config(port, admin_port);
        let started = Spawn::new(&format!("proxy {}", self.id), &self.cluster.bin)
            .args(["proxy", "--config"])
            .arg(&config)
            .env("TETHER_LOG", "info")
            .log(&self.cluster.path(&format!("proxy.{}.log", self.id)))
            .ready("listening on")
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = crate::net::addr(port);
        wait_for_port(addr, Duration::from_secs(15)).await;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let proxy = Proxy {
            id: self.id,
            region: self.region,
            url: format!("{scheme}://127.0.0.1:{port}"),
            addr,
            admin: format!("http://127.0.0.1:{admin_port}"),
            config,
            proc: started.proc,
        };
        if wait_healthy {
            // The admin listener is plain HTTP even when the client
            // listener speaks TLS; its /healthz is the same check.
            let http = &self.cluster.http;
            eventually(Duration::from_secs(10), "proxy upstream healthy", || async {
                matches!(http.get(format!("{}/healthz", proxy.admin)).send().await, Ok(r) if r.status() == 200)
            })
            .await;
        }
        proxy
    }
}

impl Proxy {
    /// The registry view this proxy is using (admin `/registry`).
    pub async fn registry(&self, http: &reqwest::Client) -> serde_json::Value {
        http.get(format!("{}/registry", self.admin))
            .send()
            .await
            .expect("registry")
            .json()
            .await
            .expect("json")
    }

    /// Waits until this proxy's registry lists every id in `ids` as healthy.
    pub async fn wait_sees(&self, http: &reqwest::Client, ids: &[&str]) {
        eventually(
            Duration::from_secs(10),
            &format!("{} sees {ids:?}", self.id),
            || async {
                let reg = self.registry(http).await;
                let servers = reg["servers"].as_array().cloned().unwrap_or_default();
                ids.iter().all(|id| {
                    servers
                        .iter()
                        .any(|s| s["id"] == *id && s["healthy"] == true)
                })
            },
        )
        .await;
    }

    /// Waits until this proxy's registry no longer lists `id`.
    pub async fn wait_gone(&self, http: &reqwest::Client, id: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("{} forgets {id}", self.id),
            || async {
                let reg = self.registry(http).await;
                !reg["servers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .any(|s| s["id"] == id)
            },
        )
        .await;
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}
