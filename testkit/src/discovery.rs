//! The discovery role: `tether discovery` with the shipped
//! `conf/discovery.toml` edited for a [`Cluster`], and helpers that speak
//! its API.

use std::net::SocketAddr;

use crate::cluster::{Cluster, Discovery};
use crate::conf::Conf;
use crate::proc::Spawn;

impl Cluster {
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
        if let Some(endpoints) = &self.etcd_endpoints {
            let list: Vec<toml::Value> = endpoints.iter().map(|e| e.as_str().into()).collect();
            conf.set("store", "kind", "etcd")
                .set("store", "endpoints", list)
                .set("store", "prefix", "/tether-test/");
        }
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

    /// Starts another discovery process with the same config (its own
    /// port, config file and log, `discovery.<name>.*`), for proxies that
    /// list several nodes. The cluster's own discovery is unaffected.
    pub fn start_extra_discovery(&self, name: &str) -> Discovery {
        let path = self
            .discovery_conf(0)
            .write(&self.path(&format!("discovery.{name}.toml")))
            .expect("write config");
        let started = Spawn::new(&format!("discovery {name}"), &self.bin)
            .args(["discovery", "--config"])
            .arg(&path)
            .env("TETHER_LOG", "info")
            .log(&self.path(&format!("discovery.{name}.log")))
            .ready("tether discovery listening on ")
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = started.first().to_owned();
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .expect("discovery address");
        Discovery {
            proc: started.proc,
            url,
            addr,
        }
    }

    pub fn discovery_url(&self) -> String {
        self.discovery
            .as_ref()
            .expect("discovery started")
            .url
            .clone()
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
