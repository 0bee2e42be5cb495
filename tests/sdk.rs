//! The Rust client SDK against real tether proxies in front of the real
//! sample app (two regions, replicating with a lag).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tether_client::{Client, Event, Routing};

/// A global URL the test can repoint (a client "jumping" regions).
#[derive(Clone)]
struct Global(Arc<Mutex<String>>);

impl Global {
    fn new(url: &str) -> Global {
        Global(Arc::new(Mutex::new(url.to_owned())))
    }
    fn set(&self, url: &str) {
        *self.0.lock().unwrap() = url.to_owned();
    }
    fn resolver(&self) -> Arc<dyn tether_client::GlobalUrl> {
        let me = self.clone();
        Arc::new(move || me.0.lock().unwrap().clone())
    }
}

struct World {
    c: Cluster,
    apps: tether_sampleapp::SampleCluster,
    eu: Proxy,
    us: Proxy,
}

async fn world(timing: Timing) -> World {
    let mut c = Cluster::new(timing);
    c.start_discovery(0);
    let apps = tether_sampleapp::SampleCluster::start(
        tether_sampleapp::ClusterConfig::new(["eu", "us"])
            .with_lag(Duration::from_millis(800), Duration::ZERO),
    )
    .await
    .unwrap();
    let eu = c
        .proxy("eu-1", "eu")
        .upstream_addr(apps.addr("eu").unwrap())
        .start()
        .await;
    let us = c
        .proxy("us-1", "us")
        .upstream_addr(apps.addr("us").unwrap())
        .start()
        .await;
    eu.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    us.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    World { c, apps, eu, us }
}

fn client(global: &Global, routing: Routing) -> Client {
    Client::builder()
        .resolver(global.resolver())
        .routing(routing)
        .reconnect_wait(Duration::from_millis(500))
        .max_reconnect_attempts(10)
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn workflow(client: &Client, user: &str) -> Result<(), String> {
    let r = client
        .post("/orders", &json!({"userId": user}))
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 201 {
        return Err(format!("create: {}", r.status));
    }
    let id = r.json::<serde_json::Value>().unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .post(
            &format!("/orders/{id}/items"),
            &json!({"sku": "book", "qty": 1}),
        )
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("add item: {}", r.status));
    }
    let r = client
        .post(&format!("/orders/{id}/checkout"), &json!({}))
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("checkout: {}", r.status));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_task_keeps_the_server_across_refreshes() {
    let w = world(Timing::default()).await;
    let global = Global::new(&w.eu.url);
    let client = client(&global, Routing::Locked);
    let mut events = client.events();
    let login = client
        .login(&json!({"username": "user-0000", "password": "demo"}))
        .await
        .unwrap();
    assert_eq!(login.server.id, "eu-1");

    // The client moves near us; mid-workflow it refreshes: kept.
    global.set(&w.us.url);
    {
        let _task = client.critical_task();
        let r = client
            .post("/orders", &json!({"userId": "user-0000"}))
            .await
            .unwrap();
        assert_eq!(r.status, 201);
        for _ in 0..3 {
            let r = client.refresh().await.unwrap();
            assert_eq!(
                (r.server.id.as_str(), r.reason.as_str(), r.server_changed),
                ("eu-1", "critical_task", false)
            );
        }
        // The workflow continues on the same server: the write is there.
        let id = r.json::<serde_json::Value>().unwrap()["orderId"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = client
            .post(
                &format!("/orders/{id}/items"),
                &json!({"sku": "a", "qty": 1}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-app-region"], "eu");
    }
    // Task over: the next refresh moves the client to the closest region.
    let r = client.refresh().await.unwrap();
    assert_eq!(
        (r.server.id.as_str(), r.reason.as_str(), r.server_changed),
        ("us-1", "moved_region", true)
    );
    let mut changed = None;
    while let Ok(e) = events.try_recv() {
        if let Event::ServerChanged { from, to, reason } = e {
            changed = Some((from.id, to.id, reason));
        }
    }
    assert_eq!(
        changed,
        Some(("eu-1".into(), "us-1".into(), "moved_region".into()))
    );
    workflow(&client, "user-0000").await.unwrap();
    drop(w.apps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_region_user_is_locked_home_from_anywhere() {
    let w = world(Timing::default()).await;
    // user-0002's home is the second region, "us" (the app's seed).
    let global = Global::new(&w.eu.url);
    let client = client(&global, Routing::Locked);
    let login = client
        .login(&json!({"username": "user-0002", "password": "demo"}))
        .await
        .unwrap();
    assert_eq!(login.server.id, "us-1");
    assert_eq!(login.server.url, w.us.url);
    let r = client.refresh().await.unwrap();
    assert_eq!((r.server.id.as_str(), r.server_changed), ("us-1", false));
    workflow(&client, "user-0002").await.unwrap();
    let r = client.get("/orders/none").await.unwrap();
    assert_eq!(r.headers["x-app-region"], "us", "served at home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_routing_follows_relock_hints() {
    let w = world(Timing::default()).await;
    let global = Global::new(&w.eu.url);
    let client = client(&global, Routing::Global);
    client
        .login(&json!({"username": "user-0000", "password": "demo"}))
        .await
        .unwrap();
    // Geo DNS now answers with the other region: the proxy there hints
    // the relock and the SDK follows it, so the workflow sees its writes.
    global.set(&w.us.url);
    workflow(&client, "user-0000").await.unwrap();
    assert!(client.stats().relocks >= 3, "{:?}", client.stats());
    let m = w.us.metrics(&w.c.http).await;
    assert!(metric(&m, "tether_proxy_requests_total{outcome=\"relock_hint\"").unwrap() >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_fails_over_at_once_and_reconnects_when_all_is_dark() {
    let mut w = world(Timing::default()).await;
    let global = Global::new(&w.us.url);
    let client = client(&global, Routing::Locked);
    client
        .login(&json!({"username": "user-0000", "password": "demo"}))
        .await
        .unwrap();
    assert_eq!(client.server().unwrap().id, "us-1");

    // us-1 dies; the global URL still answers from eu.
    global.set(&w.eu.url);
    w.us.proc.kill();
    let started = std::time::Instant::now();
    workflow(&client, "user-0000").await.unwrap();
    assert_eq!(client.server().unwrap().id, "eu-1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failover took {:?}",
        started.elapsed()
    );
    let stats = client.stats();
    assert_eq!(stats.failovers, 1, "{stats:?}");
    assert_eq!(
        stats.reconnect_waits, 0,
        "no wait when the global URL answers: {stats:?}"
    );

    // Now the global URL is dark too: the client waits ("Reconnecting…")
    // and gets through once a proxy is back.
    let mut events = client.events();
    w.eu.proc.kill();
    let port = w.eu.addr.port();
    let restart = tokio::spawn({
        let b =
            w.c.proxy("eu-1", "eu")
                .upstream_addr(w.apps.addr("eu").unwrap());
        let cfg = b.write_config(port, free_port());
        async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            // Killed on drop, however the test ends.
            Spawn::new("proxy eu-1 (restarted)", TETHER)
                .args(["proxy", "--config"])
                .arg(cfg)
                .start()
                .unwrap_or_else(|e| panic!("{e}"))
                .proc
        }
    });
    let r = client.get("/orders/none").await;
    let mut child = restart.await.unwrap();
    let r = r.expect("the client got through after reconnecting");
    // The restarted proxy may not have health-checked its app yet.
    assert!(r.status == 404 || r.status == 503, "{}", r.status);
    eventually(
        Duration::from_secs(5),
        "the restarted server serves",
        || async { matches!(client.get("/orders/none").await, Ok(r) if r.status == 404) },
    )
    .await;
    let mut waited = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, Event::Reconnecting { .. }) {
            waited += 1;
        }
    }
    assert!(waited >= 1, "a Reconnecting event was emitted");
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_tool_runs_workflows_against_a_deployment() {
    let w = world(Timing::default()).await;
    let out = tokio::process::Command::new(TETHER)
        .args([
            "bench",
            "--json",
            "--clients",
            "4",
            "--seconds",
            "2",
            "--routing",
            "global",
            "--global-url",
        ])
        .arg(&w.us.url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["workflowsCompleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["workflowsFailed"], 0, "{r}");
    for endpoint in ["login", "refresh", "create", "add_item", "checkout"] {
        let e = &r["endpoints"][endpoint];
        assert!(e["count"].as_u64().unwrap() > 0, "{endpoint}: {r}");
        assert!(e["p99Ms"].as_f64().unwrap() >= e["p50Ms"].as_f64().unwrap());
    }
    // Users whose home or lock is in eu were hinted there from us.
    assert!(r["relockHints"].as_u64().unwrap() > 0, "{r}");
    // A bad option is refused with a clear message.
    let out = tokio::process::Command::new(TETHER)
        .args([
            "bench",
            "--routing",
            "sideways",
            "--global-url",
            "http://127.0.0.1:1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--routing"));
}
