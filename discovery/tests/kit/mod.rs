//! Test kit for the discovery crate's integration tests: in-process
//! discovery nodes on 127.0.0.1:0 over real etcd members, which the
//! workspace test kit starts (`tether_testkit::Etcd`: ephemeral loopback
//! ports, temporary data dirs, never the system service).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tether_discovery::config::{EtcdConfig, StoreConfig};
use tether_discovery::{Config, Running};
pub use tether_testkit::Etcd;

pub const CLUSTER: &str = "test-cluster-token-0123456789";
pub const ADMIN: &str = "test-admin-token-0123456789";

/// A discovery node (in-process) with helpers speaking its API.
pub struct Node {
    pub running: Option<Running>,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn etcd_config(endpoints: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::loopback(CLUSTER, ADMIN);
    let mut etcd = EtcdConfig::new(endpoints);
    etcd.request_timeout = Duration::from_millis(1000);
    etcd.connect_timeout = Duration::from_millis(1000);
    config.store = StoreConfig::Etcd(etcd);
    config.heartbeat_interval = Duration::from_millis(500);
    config.ttl = Duration::from_secs(2);
    tweak(&mut config);
    config
}

impl Node {
    pub async fn start(config: Config) -> Node {
        let running = tether_discovery::bind(config)
            .await
            .expect("discovery binds");
        Node {
            base: running.url(),
            running: Some(running),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// A node over etcd that has synced (its listing answers 200).
    pub async fn over(etcd: &Etcd, tweak: impl FnOnce(&mut Config)) -> Node {
        let node = Node::start(etcd_config(etcd.endpoints(), tweak)).await;
        node.wait_serving().await;
        node
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("discovery stops cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(self.url("/v1/servers")).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "discovery at {} never served",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn heartbeat(&self, hb: &Value) -> reqwest::Response {
        self.post("/v1/heartbeat", CLUSTER, hb).await
    }

    /// Heartbeats and expects 200.
    pub async fn beat(&self, hb: &Value) -> Value {
        let r = self.heartbeat(hb).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "heartbeat {hb}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET /v1/servers` with optional query; (status, etag, body).
    pub async fn get(
        &self,
        query: &str,
        if_none_match: Option<&str>,
    ) -> (StatusCode, String, Value) {
        let mut req = self.http.get(self.url(&format!("/v1/servers{query}")));
        if let Some(tag) = if_none_match {
            req = req.header("if-none-match", tag);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, etag, body)
    }

    pub async fn list(&self) -> Value {
        let (status, etag, body) = self.get("", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(etag, format!("\"{}\"", body["version"]));
        body
    }

    pub async fn ids(&self) -> Vec<String> {
        self.list().await["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

pub fn hb(id: &str, url: &str, load: f64) -> Value {
    serde_json::json!({"id": id, "region": "eu", "url": url, "load": load, "healthy": true})
}

/// Polls `f` until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
