//! Partitions for real: two regions' proxies in Linux network namespaces
//! (`tether_testkit::netns::Lab`), SDK clients running workflows in the
//! root namespace, links cut and restored mid-run (no netem: links go down,
//! nothing is delayed).
//!
//! 1. Asymmetric partition: the clients lose `eu-1`, the proxies and
//!    discovery still reach it. The probe finds `eu-1` alive, so a client's
//!    first report keeps it; its second moves it, alone
//!    (`client_unreachable`), to `us-1`. No workflow fails; `eu-1` stays
//!    in the registry.
//! 2. Region isolation (the failover drill): `eu-1` is cut off from
//!    everything; its clients move to `us-1` (`server_down`), nothing is
//!    lost, and the time to shift is printed.
//!
//! Skipped, with the reason printed, where `ip netns add` is not permitted
//! (not root, no CAP_NET_ADMIN, no iproute2). Bounded well under 2 min.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tether_client::Client;
use tether_testkit::netns::Lab;

const PROXY_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9090;

/// Starts `tether sample-app` (regions eu,us) inside `ns`; returns the
/// process and the address of `region`'s listener.
fn start_app(c: &Cluster, ns: &str, region: &str) -> (Proc, String) {
    let mut cmd = Lab::command_in(ns, &c.bin);
    cmd.args([
        "sample-app",
        "--regions",
        "eu,us",
        "--lag-ms",
        "50",
        "--jitter-ms",
        "0",
    ]);
    let started = Spawn::command(&format!("app {region}"), cmd)
        .log(&c.path(&format!("app.{region}.log")))
        .ready_lines("", 2)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let url = started
        .ready
        .iter()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "tether sample-app region={region} listening on http://"
            ))
        })
        .unwrap_or_else(|| panic!("no {region} listener in {:?}", started.ready))
        .to_owned();
    (started.proc, url)
}

/// Starts `id`'s proxy inside `ns`, listening on `ip`.
fn start_proxy(
    c: &Cluster,
    lab: &Lab,
    ns: &str,
    id: &str,
    region: &str,
    ip: &str,
    app: &str,
) -> Proc {
    let mut conf = c.proxy(id, region).conf(PROXY_PORT, ADMIN_PORT);
    let discovery_port = c.discovery.as_ref().expect("discovery").addr.port();
    conf.set("server", "listen", format!("{ip}:{PROXY_PORT}"))
        .set("server", "public_url", format!("http://{ip}:{PROXY_PORT}"))
        .set("server", "admin_listen", format!("{ip}:{ADMIN_PORT}"))
        .set(
            "discovery",
            "url",
            format!("http://{}:{discovery_port}", lab.root_ip_for_proxies()),
        )
        .set("upstream", "addresses", vec![app.to_owned()])
        .set("routing", "probe_timeout_ms", 300i64);
    let path = conf
        .write(&c.path(&format!("proxy.{id}.toml")))
        .expect("write config");
    let mut cmd = Lab::command_in(ns, &c.bin);
    cmd.arg("proxy").arg("--config").arg(&path);
    Spawn::command(&format!("proxy {id}"), cmd)
        .env("TETHER_LOG", "info")
        .log(&c.path(&format!("proxy.{id}.log")))
        .ready("listening on")
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
        .proc
}

/// Clients running `POST /orders` in a loop, pausable so a link is cut
/// between requests (a request in flight at the cut is a different
/// question: the SDK never resends a request that may have reached the
/// app).
struct Load {
    clients: Vec<Arc<Client>>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(global_url: &str, users: &[String]) -> Load {
        let mut clients = Vec::new();
        for user in users {
            // No keep-alive: a request after a cut meets the cut at connect.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("http client");
            let client = Client::builder()
                .global_url(global_url)
                .reconnect_wait(Duration::from_millis(300))
                .max_reconnect_attempts(20)
                .connect_timeout(Duration::from_secs(1))
                .request_timeout(Duration::from_secs(5))
                .http_client(http)
                .build()
                .expect("client");
            client
                .login(&json!({"username": user, "password": "demo"}))
                .await
                .expect("login");
            clients.push(Arc::new(client));
        }
        let load = Load {
            clients,
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::new(AtomicBool::new(false)),
            idle: Arc::new(AtomicUsize::new(0)),
            ok: Arc::new(AtomicUsize::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for (client, user) in load.clients.iter().zip(users) {
            let (client, user) = (client.clone(), user.clone());
            let (stop, pause, idle) = (load.stop.clone(), load.pause.clone(), load.idle.clone());
            let (ok, failures) = (load.ok.clone(), load.failures.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if pause.load(Ordering::SeqCst) {
                        idle.fetch_add(1, Ordering::SeqCst);
                        while pause.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        idle.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    match client.post("/orders", &json!({"userId": user})).await {
                        Ok(r) if r.status.is_success() => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "{user}: {} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => failures.lock().unwrap().push(format!("{user}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }));
        }
        Load { tasks, ..load }
    }

    /// Runs `f` while every client is between two requests.
    async fn between_requests(&self, f: impl FnOnce()) {
        self.pause.store(true, Ordering::SeqCst);
        let n = self.clients.len();
        eventually(Duration::from_secs(10), "clients idle", || async {
            self.idle.load(Ordering::SeqCst) == n
        })
        .await;
        f();
        self.pause.store(false, Ordering::SeqCst);
    }

    fn servers(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|c| c.server().map(|s| s.id).unwrap_or_default())
            .collect()
    }

    /// Waits until every client is locked to `id`; the time it took.
    async fn wait_all_on(&self, id: &str, since: Instant, within: Duration) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            if self.servers().iter().all(|s| s == id) {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "clients did not all move to {id} within {within:?}: {:?}; failures: {:?}",
                self.servers(),
                self.failures.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

async fn registry_ids(http: &reqwest::Client, admin: &str) -> Vec<String> {
    let Ok(r) = http.get(format!("{admin}/registry")).send().await else {
        return Vec::new();
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| s["healthy"] == true)
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_move_clients_and_lose_nothing() {
    let lab = match Lab::try_new() {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("partition tests skipped: {why}");
            return;
        }
    };
    let mut c = Cluster::new(Timing {
        heartbeat_ms: 200,
        ttl_ms: 1500,
        warmup_ms: 0,
        health_interval_ms: 200,
    });
    c.discovery_extra = "listen = \"0.0.0.0:0\"".to_owned();
    c.start_discovery(0);
    let (eu_ip, us_ip) = (lab.eu_ip(), lab.us_ip());
    let (_eu_app, eu_app) = start_app(&c, &lab.eu_ns, "eu");
    let (_us_app, us_app) = start_app(&c, &lab.us_ns, "us");
    let _eu = start_proxy(&c, &lab, &lab.eu_ns, "eu-1", "eu", &eu_ip, &eu_app);
    let _us = start_proxy(&c, &lab, &lab.us_ns, "us-1", "us", &us_ip, &us_app);
    let us_admin = format!("http://{us_ip}:{ADMIN_PORT}");
    let eu_admin = format!("http://{eu_ip}:{ADMIN_PORT}");
    let http = c.http.clone();
    for admin in [&us_admin, &eu_admin] {
        eventually(
            Duration::from_secs(20),
            "both proxies registered",
            || async {
                let ids = registry_ids(&http, admin).await;
                ids.contains(&"eu-1".to_owned()) && ids.contains(&"us-1".to_owned())
            },
        )
        .await;
    }
    let global = format!("http://{us_ip}:{PROXY_PORT}");

    // ---- 1. asymmetric partition ----
    // Users whose home region is eu (user-0001, -0004, …): locked to eu-1.
    let users: Vec<String> = (0..6).map(|i| format!("user-{:04}", 1 + 3 * i)).collect();
    let load = Load::start(&global, &users).await;
    assert!(
        load.servers().iter().all(|s| s == "eu-1"),
        "{:?}",
        load.servers()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut = Instant::now();
    load.between_requests(|| lab.cut_clients_from_eu()).await;
    let shift = load.wait_all_on("us-1", cut, Duration::from_secs(30)).await;
    // Work on the new server for a moment.
    let before = load.ok.load(Ordering::SeqCst);
    eventually(Duration::from_secs(10), "workflows continue", || async {
        load.ok.load(Ordering::SeqCst) >= before + 12
    })
    .await;
    let (ok, failures) = load.stop().await;
    eprintln!(
        "asymmetric partition: {} clients moved to us-1 in {shift:?}; {ok} requests ok, {} failed",
        users.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    // eu-1 stayed alive for everybody else.
    assert!(registry_ids(&http, &us_admin)
        .await
        .contains(&"eu-1".to_owned()));
    let m = http
        .get(format!("{us_admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let moved = metric(
        &m,
        "tether_proxy_refresh_decisions_total{reason=\"client_unreachable\"",
    )
    .unwrap_or(0.0);
    assert!(
        moved >= users.len() as f64,
        "client_unreachable moves: {moved}\n{m}"
    );

    // ---- 2. region isolation (the failover drill) ----
    lab.heal();
    eventually(Duration::from_secs(10), "eu-1 reachable again", || async {
        matches!(http.get(format!("http://{eu_ip}:{PROXY_PORT}/healthz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let users: Vec<String> = (6..12).map(|i| format!("user-{:04}", 1 + 3 * i)).collect();
    let load = Load::start(&global, &users).await;
    assert!(
        load.servers().iter().all(|s| s == "eu-1"),
        "{:?}",
        load.servers()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut = Instant::now();
    load.between_requests(|| lab.isolate_eu()).await;
    let shift = load.wait_all_on("us-1", cut, Duration::from_secs(30)).await;
    let before = load.ok.load(Ordering::SeqCst);
    eventually(Duration::from_secs(10), "workflows continue", || async {
        load.ok.load(Ordering::SeqCst) >= before + 12
    })
    .await;
    eventually(Duration::from_secs(10), "discovery evicts eu-1", || async {
        !registry_ids(&http, &us_admin)
            .await
            .contains(&"eu-1".to_owned())
    })
    .await;
    let (ok, failures) = load.stop().await;
    eprintln!(
        "region isolation: {} clients moved to us-1 in {shift:?}; {ok} requests ok, {} failed",
        users.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}
