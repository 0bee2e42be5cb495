//! Discovery over etcd with 10,000 servers: heartbeats per second one node
//! absorbs, full snapshot latency, and the size and time of a one-server
//! delta. Not a test: it prints figures (docs/discovery.md records them).
//!
//! ```text
//! cargo run --release -p tether-discovery --example etcd_bench
//! ```
//!
//! Starts its own single etcd member (the `etcd` binary on PATH) on
//! ephemeral loopback ports in a temporary directory, or uses
//! `TETHER_BENCH_ETCD=http://host:port,...` when set; one discovery node
//! in-process; HTTP clients on the same machine.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_discovery::config::{EtcdConfig, StoreConfig};
use tether_discovery::Config;

const SERVERS: usize = 10_000;
const CONCURRENCY: usize = 64;
const STEADY: Duration = Duration::from_secs(10);

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd() -> (Vec<String>, Option<Etcd>) {
    if let Ok(list) = std::env::var("TETHER_BENCH_ETCD") {
        return (list.split(',').map(str::to_owned).collect(), None);
    }
    let dir = tempfile::tempdir().unwrap();
    let client = format!("http://127.0.0.1:{}", port());
    let peer = format!("http://127.0.0.1:{}", port());
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("bench={peer}"))
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd on PATH (scripts/install-deps.sh)");
    (vec![client], Some(Etcd(child, dir)))
}

fn hb(i: usize, load: f64) -> String {
    format!(
        r#"{{"id":"srv-{i:05}","region":"r{}","url":"http://10.{}.{}.{}:8080","load":{load},"healthy":true}}"#,
        i % 4,
        i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Sends `hb(i)` for every i handed out by `next` until it reaches `end`
/// or the deadline, from `CONCURRENCY` tasks; returns the count sent.
async fn heartbeats(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    total: Option<usize>,
    deadline: Option<Instant>,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, token, next) =
            (http.clone(), url.to_owned(), token.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if total.is_some_and(|t| n >= t) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return sent;
                }
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .body(hb(n % SERVERS, 1.0))
                    .send()
                    .await
                    .expect("heartbeat sent");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                sent += 1;
            }
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    sent
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (endpoints, _etcd) = start_etcd();
    let cluster = "bench-cluster-token-0123456789";
    let mut config = Config::loopback(cluster, "bench-admin-token-0123456789");
    // Long enough that nothing expires during the run.
    config.ttl = Duration::from_secs(120);
    config.heartbeat_interval = Duration::from_secs(40);
    let mut etcd = EtcdConfig::new(endpoints.clone());
    etcd.prefix = format!("/tether-bench-{}/", std::process::id());
    config.store = StoreConfig::Etcd(etcd);
    let node = tether_discovery::bind(config)
        .await
        .expect("discovery binds");
    let base = node.url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/v1/servers"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            Instant::now() < deadline,
            "discovery never synced with etcd at {endpoints:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hb_url = format!("{base}/v1/heartbeat");

    println!("etcd {endpoints:?}, one discovery node, {SERVERS} servers, {CONCURRENCY} concurrent clients");
    let t = Instant::now();
    heartbeats(&http, &hb_url, cluster, Some(SERVERS), None).await;
    let took = t.elapsed();
    println!(
        "register {SERVERS} servers (lease grant + put txn each): {:.2} s, {:.0}/s",
        took.as_secs_f64(),
        SERVERS as f64 / took.as_secs_f64()
    );

    let t = Instant::now();
    let sent = heartbeats(&http, &hb_url, cluster, None, Some(Instant::now() + STEADY)).await;
    let took = t.elapsed();
    println!(
        "steady heartbeats (nothing material: one LeaseKeepAlive each): {sent} in {:.1} s = {:.0}/s",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64()
    );

    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let body = http
            .get(format!("{base}/v1/servers"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(t.elapsed());
        size = body.len();
    }
    times.sort();
    println!(
        "full snapshot, {SERVERS} servers, {size} bytes: p50 {:.2} ms, p99 {:.2} ms (200 GETs, HTTP on loopback included)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );

    let mut times = Vec::new();
    let mut sizes = Vec::new();
    for round in 0..100 {
        let v: serde_json::Value = http
            .get(format!("{base}/v1/servers?since=0"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let version = v["version"].as_u64().unwrap();
        // One material change (load 1 → 50 or back).
        let load = if round % 2 == 0 { 50.0 } else { 1.0 };
        let r = http
            .post(&hb_url)
            .bearer_auth(cluster)
            .body(hb(7, load))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let t = Instant::now();
        let body = http
            .get(format!("{base}/v1/servers?since={version}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(t.elapsed());
        let d: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(d["full"], false);
        assert_eq!(d["changed"].as_array().unwrap().len(), 1, "{d}");
        sizes.push(body.len());
    }
    times.sort();
    sizes.sort();
    println!(
        "one-server delta: {}..{} bytes, p50 {:.3} ms, p99 {:.3} ms (100 rounds)",
        sizes[0],
        sizes[sizes.len() - 1],
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
    node.stop().await.unwrap();
}
