//! Discovery that survives (docs/design.md §6a, §6b), end to end with real
//! processes: three etcd members, two discovery nodes over them, three
//! proxies listing both nodes (`discovery.urls`), and clients logging in,
//! calling the app and refreshing while members and nodes die.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Deployment {
    etcd: Etcd,
    c: Cluster,
    /// The second discovery node (the first is `c.discovery`).
    b: Discovery,
    proxies: Vec<Proxy>,
    _apps: Vec<Upstream>,
}

impl Deployment {
    async fn start(access_ttl: u64) -> Deployment {
        let etcd = Etcd::start(3).await;
        let mut c = Cluster::new(Timing {
            heartbeat_ms: 300,
            ttl_ms: 2000,
            warmup_ms: 0,
            health_interval_ms: 200,
        });
        c.etcd_endpoints = Some(etcd.endpoints());
        // A short grace window, so a replay is reuse a second later.
        c.discovery_extra = "refresh_grace_ms = 500".into();
        c.start_discovery(0);
        let b = c.start_extra_discovery("b");
        let urls = [c.discovery_url(), b.url.clone()];
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let mut apps = Vec::new();
        let mut proxies = Vec::new();
        for i in 1..=3 {
            let app = Upstream::start(&format!("app-{i}")).await;
            let p = c
                .proxy(&format!("eu-{i}"), "eu")
                .upstream(&app)
                .access_ttl(access_ttl)
                .discovery_urls(&urls)
                .start()
                .await;
            apps.push(app);
            proxies.push(p);
        }
        for p in &proxies {
            p.wait_sees(&c.http, &["eu-1", "eu-2", "eu-3"]).await;
        }
        Deployment {
            etcd,
            c,
            b,
            proxies,
            _apps: apps,
        }
    }

    fn a_port(&self) -> u16 {
        self.c.discovery.as_ref().expect("node a").addr.port()
    }
}

/// The value of the first series starting with `prefix` and containing
/// `needle`.
fn series(text: &str, prefix: &str, needle: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l.contains(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Clients running workflows (log in, call the app, refresh, call again)
/// against every proxy until stopped; counts finished and failed ones.
struct Workload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    fn start(http: &reqwest::Client, proxies: &[Proxy], clients: usize) -> Workload {
        let w = Workload {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            errors: Arc::default(),
            tasks: Vec::new(),
        };
        let urls: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (http, urls) = (http.clone(), urls.clone());
            let (stop, done, failed, errors) = (
                w.stop.clone(),
                w.done.clone(),
                w.failed.clone(),
                w.errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let url = &urls[(i + n) % urls.len()];
                    n += 1;
                    match workflow(&http, url, &format!("user{i}")).await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        Workload { tasks, ..w }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

async fn workflow(http: &reqwest::Client, url: &str, user: &str) -> Result<(), String> {
    let r = http
        .post(format!("{url}/auth/login"))
        .json(&json!({"username": user, "password": "pw"}))
        .send()
        .await
        .map_err(|e| format!("login: {e}"))?;
    if r.status() != 200 {
        return Err(format!("login: {}", r.status()));
    }
    let access = header(&r, "tether-access-token")?;
    let refresh_token = header(&r, "tether-refresh-token")?;
    for step in 0..2 {
        let s = get(http, &format!("{url}/x/{step}"), Some(&access))
            .await
            .status();
        if s != 200 {
            return Err(format!("step {step}: {s}"));
        }
    }
    let (s, v) = refresh(http, url, json!({"refreshToken": refresh_token})).await;
    if s != 200 {
        return Err(format!("refresh: {s} {v}"));
    }
    let access = v["accessToken"].as_str().unwrap_or_default();
    let s = get(http, &format!("{url}/x/after"), Some(access))
        .await
        .status();
    if s != 200 {
        return Err(format!("after refresh: {s}"));
    }
    Ok(())
}

fn header(r: &reqwest::Response, name: &str) -> Result<String, String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_an_etcd_member_then_a_discovery_node_fails_no_workflow() {
    let mut d = Deployment::start(60).await;
    let w = Workload::start(&d.c.http, &d.proxies, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.etcd.kill_member(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.c.discovery.as_mut().expect("node a").proc.kill();
    let b_url = d.b.url.clone();
    for p in &d.proxies {
        eventually(
            Duration::from_secs(10),
            "the proxy moves to discovery node b",
            || async {
                let m = p.metrics(&d.c.http).await;
                series(&m, "tether_proxy_discovery_node{", &format!("\"{b_url}\"")) == Some(1.0)
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (done, failed, errors) = w.finish().await;
    assert!(done > 0, "no workflow finished");
    assert_eq!(failed, 0, "{done} done; failures: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_the_same_version_and_etag() {
    let d = Deployment::start(60).await;
    let a_url = d.c.discovery_url();
    let get_list = |base: String, tag: Option<String>| {
        let http = d.c.http.clone();
        async move {
            let mut req = http.get(format!("{base}/v1/servers"));
            if let Some(t) = tag {
                req = req.header("if-none-match", t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let etag = r
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, etag)
        }
    };
    let mut same = None;
    for _ in 0..100 {
        let (_, a) = get_list(a_url.clone(), None).await;
        let (_, b) = get_list(d.b.url.clone(), None).await;
        if a == b {
            same = Some((a, b));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (etag_a, etag_b) = same.expect("both nodes list the same version");
    assert!(etag_a.is_some());
    let (status, _) = get_list(d.b.url.clone(), etag_a.clone()).await;
    assert_eq!(status, 304, "node b honours node a's ETag");
    let (status, _) = get_list(a_url.clone(), etag_b).await;
    assert_eq!(status, 304, "node a honours node b's ETag");
}

/// Refreshes at `url` until the answer is 200 and `pred` holds.
async fn refresh_until(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (s, v) = refresh(http, url, json!({"refreshToken": token})).await;
        if s == 200 && pred(&v) {
            return v;
        }
        last = json!({"status": s, "body": v});
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}; last answer {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_discovery_down_past_the_access_ttl_signs_nobody_out_and_reuse_is_caught_after() {
    let access_ttl = 60;
    let mut d = Deployment::start(access_ttl).await;
    let http = d.c.http.clone();
    let urls: Vec<String> = d.proxies.iter().map(|p| p.url.clone()).collect();
    let mut users = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        users.push(login(&http, url, &format!("u{i}"), None).await);
    }
    let a_port = d.a_port();
    d.c.discovery.as_mut().expect("node a").proc.kill();
    d.b.proc.kill();
    // Every proxy answers refreshes in extend mode: same refresh token,
    // same server (no relock).
    for (u, url) in users.iter().zip(&urls) {
        let v = refresh_until(&http, url, &u.refresh, "extend mode", |v| {
            v["reason"] == "discovery_unavailable"
        })
        .await;
        assert_eq!(v["refreshToken"], u.refresh.as_str(), "{v}");
    }
    // Past the access-token lifetime, every user still works.
    // (The kit's proxies allow 2 s of clock leeway.)
    tokio::time::sleep(Duration::from_secs(access_ttl + 2)).await;
    for (u, url) in users.iter().zip(&urls) {
        eventually(
            Duration::from_secs(10),
            "the first access token has expired",
            || async {
                get(&http, &format!("{url}/x"), Some(&u.access))
                    .await
                    .status()
                    == 401
            },
        )
        .await;
        let (s, v) = refresh(&http, url, json!({"refreshToken": u.refresh})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["reason"], "discovery_unavailable");
        assert_eq!(v["refreshToken"], u.refresh.as_str());
        let access = v["accessToken"].as_str().unwrap();
        assert_eq!(
            get(&http, &format!("{url}/x"), Some(access)).await.status(),
            200
        );
    }
    // Discovery returns: the next refresh rotates, and a copy of the old
    // token is caught as reuse, its family revoked at every proxy.
    d.c.start_discovery(a_port);
    let u = &users[0];
    let rotated = refresh_until(&http, &urls[0], &u.refresh, "a rotation", |v| {
        v["refreshToken"] != u.refresh.as_str()
    })
    .await;
    let successor = rotated["refreshToken"].as_str().unwrap().to_owned();
    // Past the grace window (a retry within it gets the same successor).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, v) = refresh(&http, &urls[1], json!({"refreshToken": u.refresh})).await;
    assert_eq!(s, 401, "the replayed token is refused: {v}");
    for url in &urls {
        let (s, v) = refresh(&http, url, json!({"refreshToken": successor})).await;
        assert_eq!(s, 401, "the family is revoked at {url}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_restart_of_every_discovery_node() {
    let mut d = Deployment::start(60).await;
    let http = d.c.http.clone();
    let l = login(&http, &d.proxies[0].url, "mallory", None).await;
    let r = http
        .post(format!("{}/auth/logout", d.proxies[0].url))
        .json(&json!({"refreshToken": l.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a_port = d.a_port();
    d.c.discovery.as_mut().expect("node a").proc.kill();
    d.b.proc.kill();
    d.c.start_discovery(a_port);
    let b = d.c.start_extra_discovery("b2");
    let late =
        d.c.proxy("eu-4", "eu")
            .upstream_addr(d._apps[0].addr)
            .discovery_urls(&[&b.url])
            .start()
            .await;
    for p in d.proxies.iter().chain([&late]) {
        eventually(
            Duration::from_secs(15),
            "the revoked family is refused",
            || async {
                let (s, v) = refresh(&http, &p.url, json!({"refreshToken": l.refresh})).await;
                s == 401 && v != Value::Null
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_without_quorum_is_discovery_down_and_quorum_back_needs_nothing() {
    let mut d = Deployment::start(60).await;
    let http = d.c.http.clone();
    let url = d.proxies[0].url.clone();
    let l = login(&http, &url, "quorum", None).await;
    d.etcd.kill_member(1);
    d.etcd.kill_member(2);
    let v = refresh_until(&http, &url, &l.refresh, "extend mode", |v| {
        v["reason"] == "discovery_unavailable"
    })
    .await;
    assert_eq!(v["refreshToken"], l.refresh.as_str());
    assert_eq!(
        get(&http, &format!("{url}/x"), v["accessToken"].as_str())
            .await
            .status(),
        200
    );
    d.etcd.restart_member(1);
    d.etcd.restart_member(2);
    d.etcd.wait_ready().await;
    let v = refresh_until(&http, &url, &l.refresh, "a rotation", |v| {
        v["refreshToken"] != l.refresh.as_str()
    })
    .await;
    assert_ne!(v["reason"], "discovery_unavailable");
}
