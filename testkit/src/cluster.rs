//! A test cluster: a temp folder with fresh secrets (`tether keygen`), one
//! discovery process and any number of proxies started from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::conf::Conf;
use crate::proc::{tether_bin, Proc, Spawn};
use crate::proxy::ProxyBuilder;

/// Timing knobs shared by discovery and proxies, small for tests.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub ttl_ms: u64,
    pub warmup_ms: u64,
    pub health_interval_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 200,
            ttl_ms: 1200,
            warmup_ms: 0,
            health_interval_ms: 200,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub timing: Timing,
    /// The `tether` binary every process of this cluster runs.
    pub bin: PathBuf,
    /// Extra TOML lines for the `[discovery]` table of discovery's config.
    pub discovery_extra: String,
    pub discovery: Option<Discovery>,
    pub http: reqwest::Client,
}

/// The discovery process of a [`Cluster`].
pub struct Discovery {
    pub proc: Proc,
    pub url: String,
    pub addr: SocketAddr,
}

impl Cluster {
    /// A cluster running [`tether_bin`].
    pub fn new(timing: Timing) -> Cluster {
        Cluster::with_bin(tether_bin(), timing)
    }

    pub fn with_bin(bin: PathBuf, timing: Timing) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(&bin)
            .args(["keygen", "--dir"])
            .arg(dir.path())
            .output()
            .expect("tether keygen");
        assert!(out.status.success(), "keygen failed: {out:?}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        Cluster {
            dir,
            timing,
            bin,
            discovery_extra: String::new(),
            discovery: None,
            http,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn secret(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file))
            .expect("token")
            .trim()
            .to_owned()
    }

    pub fn cluster_token(&self) -> String {
        self.secret("cluster.token")
    }

    pub fn admin_token(&self) -> String {
        self.secret("admin.token")
    }

    /// Discovery's config: the shipped `conf/discovery.toml` with this
    /// cluster's port, timings and secrets (other keys at their defaults),
    /// then [`Cluster::discovery_extra`].
    pub fn discovery_conf(&self, port: u16) -> Conf {
        let t = self.timing;
        let mut conf = Conf::discovery();
        conf.retain("discovery", &[])
            .set("discovery", "listen", format!("127.0.0.1:{port}"))
            .set("discovery", "worker_threads", 1i64)
            .set("discovery", "heartbeat_interval_ms", t.heartbeat_ms as i64)
            .set("discovery", "ttl_ms", t.ttl_ms as i64)
            .set("discovery", "warmup_ms", t.warmup_ms as i64)
            .set("discovery", "cluster_token_file", "cluster.token")
            .set("discovery", "admin_token_file", "admin.token")
            .merge("discovery", &self.discovery_extra);
        conf
    }

    /// Starts (or restarts, on `port`; 0 for an ephemeral one) the
    /// discovery process.
    pub fn start_discovery(&mut self, port: u16) -> &Discovery {
        let path = self
            .discovery_conf(port)
            .write(&self.path("discovery.toml"))
            .expect("write config");
        let started = Spawn::new("discovery", &self.bin)
            .args(["discovery", "--config"])
            .arg(&path)
            .env("TETHER_LOG", "info")
            .log(&self.path("discovery.log"))
            .ready("tether discovery listening on ")
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = started.first().to_owned();
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .expect("discovery address");
        self.discovery = Some(Discovery {
            proc: started.proc,
            url,
            addr,
        });
        self.discovery.as_ref().expect("just set")
    }

    pub fn discovery_url(&self) -> String {
        self.discovery
            .as_ref()
            .expect("discovery started")
            .url
            .clone()
    }

    /// A proxy to configure and start (see [`ProxyBuilder`]).
    pub fn proxy(&self, id: &str, region: &str) -> ProxyBuilder<'_> {
        ProxyBuilder::new(self, id, region)
    }

    /// The registry as discovery lists it.
    pub async fn servers(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/servers", self.discovery_url()))
            .send()
            .await
            .expect("list servers")
            .json()
            .await
            .expect("json")
    }

    /// Registers a server directly with discovery (a fake peer for
    /// placement tests); repeat within the TTL to keep it alive.
    pub async fn heartbeat(&self, id: &str, region: &str, url: &str, load: f64) {
        let r = self
            .http
            .post(format!("{}/v1/heartbeat", self.discovery_url()))
            .bearer_auth(self.cluster_token())
            .json(&serde_json::json!({"id": id, "region": region, "url": url, "load": load, "healthy": true}))
            .send()
            .await
            .expect("heartbeat");
        assert!(r.status().is_success(), "heartbeat refused: {}", r.status());
    }
}
