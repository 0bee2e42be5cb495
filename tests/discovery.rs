//! The discovery service over real HTTP (docs/design.md §6): an in-process server
//! on 127.0.0.1:0 driven with reqwest, plus the `tether` binary as a child
//! process.
//!
//! One suite, two stores (docs/design.md §6a): every scenario that does not
//! depend on the store's nature runs twice, over the memory store and over
//! a one-member etcd the kit starts (`on_both_stores!` at the end makes
//! `memory::NAME` and `etcd::NAME` of each). Warm-up and the binary's own
//! tests stay memory-only: warm-up does not exist over etcd, and the binary
//! tests check the shipped config.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether_discovery::config::{EtcdConfig, StoreConfig};
use tether_discovery::{Config, Running};
use tether_testkit::{eventually, Etcd, Spawn};

const CLUSTER: &str = "test-cluster-token-0123456789";
const ADMIN: &str = "test-admin-token-0123456789";

/// Which store a scenario runs over.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Memory,
    Etcd,
}

impl Store {
    /// A short heartbeat interval and TTL for eviction scenarios. etcd
    /// leases count whole seconds, so over etcd they are one second long.
    fn short_ttl(self) -> (Duration, Duration) {
        match self {
            Store::Memory => (Duration::from_millis(100), Duration::from_millis(300)),
            Store::Etcd => (Duration::from_millis(300), Duration::from_secs(1)),
        }
    }
}

/// Runs each named `async fn NAME(store: Store)` as two tests,
/// `memory::NAME` and `etcd::NAME`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Memory).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Store::Etcd).await
                }
            )*
        }
    };
}

/// A discovery server for one test, with helpers that speak its API.
struct Discovery {
    running: Running,
    base: String,
    http: reqwest::Client,
    /// The etcd under the etcd store; dropped (killed) after the server.
    _etcd: Option<Etcd>,
}

impl Discovery {
    async fn start(store: Store) -> Discovery {
        Discovery::with(store, |_| {}).await
    }

    async fn with(store: Store, tweak: impl FnOnce(&mut Config)) -> Discovery {
        let mut config = Config::loopback(CLUSTER, ADMIN);
        let etcd = match store {
            Store::Memory => None,
            Store::Etcd => {
                let etcd = Etcd::start(1).await;
                let mut e = EtcdConfig::new(etcd.endpoints());
                e.request_timeout = Duration::from_millis(1000);
                e.connect_timeout = Duration::from_millis(1000);
                config.store = StoreConfig::Etcd(e);
                Some(etcd)
            }
        };
        tweak(&mut config);
        let running = tether_discovery::bind(config)
            .await
            .expect("discovery binds");
        let d = Discovery {
            base: running.url(),
            running,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            _etcd: etcd,
        };
        if store == Store::Etcd {
            // Over etcd the node answers 503 until its first sync; wait on
            // the gauge rather than a listing, which the tests count.
            eventually(
                Duration::from_secs(20),
                "discovery synced with etcd",
                || async { d.metric("tether_discovery_store_up").await == 1.0 },
            )
            .await;
        }
        d
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_raw(
        &self,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/v1/heartbeat"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// Heartbeats and expects 200; returns the ack.
    async fn heartbeat(&self, hb: &Value) -> Value {
        let r = self.post_raw(Some(CLUSTER), hb.to_string()).await;
        assert_eq!(r.status(), StatusCode::OK, "heartbeat {hb}");
        r.json().await.unwrap()
    }

    async fn list(&self) -> Value {
        let r = self.http.get(self.url("/v1/servers")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            etag,
            format!("\"{}\"", v["version"]),
            "ETag is the quoted version"
        );
        v
    }

    /// The listing without the ages, which move between two reads.
    async fn state(&self) -> Value {
        let mut v = self.list().await;
        for s in v["servers"].as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("lastSeenMs");
        }
        v
    }

    async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    async fn drain(
        &self,
        method: reqwest::Method,
        id: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, self.url(&format!("/v1/servers/{id}/drain")));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// The value of one series (`name{labels}` exactly as exposed), or 0 when
/// absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn hb(id: &str) -> Value {
    json!({"id": id, "region": "eu", "url": format!("http://127.0.0.1:9/{id}"), "load": 1.0, "healthy": true})
}

async fn heartbeat_then_listed_with_every_field(store: Store) {
    let d = Discovery::start(store).await;
    let empty = d.list().await;
    assert_eq!(empty["servers"], json!([]));
    let ack = d
        .heartbeat(&json!({"id":"eu-2","region":"eu","url":"https://eu2.example:8443","load":3.5,"healthy":true,"draining":true}))
        .await;
    assert_eq!(ack["ttlMs"], 6000);
    let version = ack["registryVersion"].as_u64().unwrap();
    assert!(version > empty["version"].as_u64().unwrap());
    d.heartbeat(&hb("eu-1")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let list = d.list().await;
    assert_eq!(list["version"].as_u64().unwrap(), version + 1);
    let servers = list["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["id"], "eu-1", "sorted by id");
    let s = &servers[1];
    let mut keys: Vec<_> = s.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "draining",
            "healthy",
            "id",
            "lastSeenMs",
            "load",
            "region",
            "url"
        ]
    );
    assert_eq!(s["url"], "https://eu2.example:8443");
    assert_eq!(s["load"], 3.5);
    assert_eq!(s["draining"], true);
    let age = s["lastSeenMs"].as_u64().unwrap();
    assert!((30..2000).contains(&age), "lastSeenMs {age}");
    // The listing is a valid protocol snapshot.
    let snap: tether_protocol::wire::Snapshot = serde_json::from_value(list).unwrap();
    tether_protocol::registry::check_snapshot(&Default::default(), &snap).unwrap();
}

async fn steady_heartbeats_keep_the_version_and_a_wrong_content_type_is_fine(store: Store) {
    let d = Discovery::start(store).await;
    let v1 = d.heartbeat(&hb("a")).await["registryVersion"]
        .as_u64()
        .unwrap();
    let r = d
        .http
        .post(d.url("/v1/heartbeat"))
        .bearer_auth(CLUSTER)
        .header("content-type", "text/plain")
        .body(
            json!({"id":"a","region":"eu","url":"http://127.0.0.1:9/a","load":1.2,"healthy":true})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ack: Value = r.json().await.unwrap();
    assert_eq!(
        ack["registryVersion"].as_u64().unwrap(),
        v1,
        "an immaterial load change does not bump"
    );
    let list = d.list().await;
    // Over etcd an immaterial heartbeat is a lease keep-alive, not a write
    // (docs/discovery.md, "Discovery on etcd"), so the stored load stays
    // the last material one; in memory the listing shows the latest.
    let shown = if store == Store::Memory { 1.2 } else { 1.0 };
    assert_eq!(
        list["servers"][0]["load"], shown,
        "the listing shows the load as stored"
    );
    let v2 = d
        .heartbeat(
            &json!({"id":"a","region":"eu","url":"http://127.0.0.1:9/a","load":5,"healthy":true}),
        )
        .await;
    assert_eq!(v2["registryVersion"].as_u64().unwrap(), v1 + 1);
}

async fn silence_past_the_ttl_evicts(store: Store) {
    let (interval, ttl) = store.short_ttl();
    let d = Discovery::with(store, |c| {
        c.heartbeat_interval = interval;
        c.ttl = ttl;
    })
    .await;
    d.heartbeat(&hb("quiet")).await;
    d.heartbeat(&hb("chatty")).await;
    let v = d.list().await["version"].as_u64().unwrap();
    // Twice the TTL (plus etcd's lease-expiry check, about half a second).
    let quiet_for = ttl * 2
        + match store {
            Store::Memory => Duration::ZERO,
            Store::Etcd => Duration::from_millis(700),
        };
    let start = Instant::now();
    while start.elapsed() < quiet_for {
        d.heartbeat(&hb("chatty")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = d.list().await;
    assert_eq!(list["servers"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["servers"][0]["id"], "chatty");
    // One change: the eviction. Over etcd the version is the revision of
    // that change, and etcd's revision also counts writes outside the
    // registry (family rotations, each node's `alive` every second), so it
    // grows by one or more; the delta since `v` holds just the eviction.
    let version = list["version"].as_u64().unwrap();
    match store {
        Store::Memory => assert_eq!(version, v + 1, "one change: the eviction"),
        Store::Etcd => {
            assert!(version > v, "{version} after {v}");
            let delta: Value = d
                .http
                .get(d.url(&format!("/v1/servers?since={v}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(delta["removed"], json!(["quiet"]), "{delta}");
            assert_eq!(delta["changed"], json!([]), "{delta}");
            assert_eq!(delta["full"], false, "{delta}");
        }
    }
    let m = d.metrics().await;
    assert_eq!(metric(&m, "tether_discovery_evictions_total"), 1.0);
    assert_eq!(metric(&m, "tether_discovery_servers"), 1.0);
    assert_eq!(
        metric(&m, "tether_discovery_live_servers{region=\"eu\"}"),
        1.0
    );
    // The background sweeper evicts without any read.
    eventually(Duration::from_secs(5), "the sweeper evicts", || async {
        d.metric("tether_discovery_evictions_total").await >= 2.0
    })
    .await;
    assert_eq!(d.metric("tether_discovery_evictions_total").await, 2.0);
    assert_eq!(d.metric("tether_discovery_servers").await, 0.0);
}

async fn etag_round_trip(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let r = d.http.get(d.url("/v1/servers")).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    let r = d
        .http
        .get(d.url("/v1/servers"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let weak = format!("W/{}", etag.to_str().unwrap());
    let r = d
        .http
        .get(d.url("/v1/servers"))
        .header("if-none-match", weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = d
        .http
        .get(d.url("/v1/servers"))
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    d.heartbeat(&hb("b")).await;
    let r = d
        .http
        .get(d.url("/v1/servers"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()["etag"], etag);
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tether_discovery_snapshot_requests_total{status=\"304\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "tether_discovery_snapshot_requests_total{status=\"200\"}"
        ),
        3.0
    );
}

async fn long_poll_wakes_on_a_change(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let etag = format!("\"{}\"", d.list().await["version"]);
    let poll = {
        let req = d
            .http
            .get(d.url("/v1/servers?wait=10"))
            .header("if-none-match", &etag);
        tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let at = Instant::now();
            (
                r.status(),
                r.headers()["etag"].to_str().unwrap().to_owned(),
                r.json::<Value>().await.unwrap(),
                at,
            )
        })
    };
    // Let the poll park, and see it counted.
    let parked = Instant::now();
    while d.metric("tether_discovery_longpoll_waiters").await < 1.0 {
        assert!(
            parked.elapsed() < Duration::from_secs(5),
            "the long-poll never parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    let ack = d.heartbeat(&hb("b")).await;
    let acked = Instant::now();
    let (status, new_etag, body, answered) = poll.await.unwrap();
    let wake = answered.saturating_duration_since(sent);
    println!(
        "long-poll answered {wake:?} after the change was sent (the heartbeat's own ack took {:?})",
        acked - sent
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(new_etag, format!("\"{}\"", ack["registryVersion"]));
    assert_eq!(body["servers"].as_array().unwrap().len(), 2);
    assert!(wake < Duration::from_millis(100), "woke after {wake:?}");
    assert_eq!(d.metric("tether_discovery_longpoll_waiters").await, 0.0);
}

async fn long_poll_wakes_on_an_eviction(store: Store) {
    let (interval, ttl) = store.short_ttl();
    let d = Discovery::with(store, |c| {
        c.heartbeat_interval = interval;
        c.ttl = ttl;
    })
    .await;
    d.heartbeat(&hb("a")).await;
    let etag = format!("\"{}\"", d.list().await["version"]);
    let start = Instant::now();
    let r = d
        .http
        .get(d.url("/v1/servers?wait=5"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["servers"], json!([]));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

async fn long_poll_times_out_cleanly_and_answers_at_once_without_a_match(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let etag = format!("\"{}\"", d.list().await["version"]);
    let start = Instant::now();
    let r = d
        .http
        .get(d.url("/v1/servers?wait=1"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!(d.metric("tether_discovery_longpoll_waiters").await, 0.0);

    // No If-None-Match, or a stale one: answered at once.
    for stale in [None, Some("\"1\"")] {
        let mut req = d.http.get(d.url("/v1/servers?wait=10"));
        if let Some(tag) = stale {
            req = req.header("if-none-match", tag);
        }
        let start = Instant::now();
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    // wait=0 with a match: an immediate 304.
    let r = d
        .http
        .get(d.url("/v1/servers?wait=0"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

async fn bad_wait_is_a_400_naming_wait(store: Store) {
    let d = Discovery::start(store).await;
    for q in ["wait=31", "wait=-1", "wait=abc", "wait=", "wait=1.5"] {
        let r = d
            .http
            .get(d.url(&format!("/v1/servers?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["field"], "wait", "{q}");
    }
}

async fn shutdown_releases_parked_long_polls(store: Store) {
    let d = Discovery::start(store).await;
    let etag = format!("\"{}\"", d.list().await["version"]);
    let req = d
        .http
        .get(d.url("/v1/servers?wait=30"))
        .header("if-none-match", etag);
    let poll = tokio::spawn(async move { req.send().await.unwrap().status() });
    while d.metric("tether_discovery_longpoll_waiters").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    d.running.stop().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        start.elapsed()
    );
    assert_eq!(poll.await.unwrap(), StatusCode::NOT_MODIFIED);
}

async fn drain_needs_the_admin_token_is_sticky_and_can_be_undone(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let before = d.state().await;
    for token in [None, Some(CLUSTER), Some("wrong-token-wrong-token")] {
        let r = d.drain(reqwest::Method::POST, "a", token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    }
    assert_eq!(d.state().await, before);

    let r = d.drain(reqwest::Method::POST, "nobody", Some(ADMIN)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_server");
    let r = d
        .drain(reqwest::Method::POST, "bad%20id", Some(ADMIN))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "id");

    let r = d.drain(reqwest::Method::POST, "a", Some(ADMIN)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let entry: Value = r.json().await.unwrap();
    assert_eq!(entry["id"], "a");
    assert_eq!(entry["draining"], true);
    let drained = d.list().await;
    assert_eq!(
        drained["version"].as_u64().unwrap(),
        before["version"].as_u64().unwrap() + 1
    );
    assert_eq!(drained["servers"][0]["draining"], true);

    // A heartbeat saying draining:false does not undo an operator's drain.
    d.heartbeat(&hb("a")).await;
    let still = d.list().await;
    assert_eq!(still["servers"][0]["draining"], true);
    assert_eq!(still["version"], drained["version"]);

    let r = d.drain(reqwest::Method::DELETE, "a", Some(ADMIN)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["draining"], false);
    let undone = d.list().await;
    assert_eq!(undone["servers"][0]["draining"], false);
    assert_eq!(
        undone["version"].as_u64().unwrap(),
        drained["version"].as_u64().unwrap() + 1
    );
    let r = d.drain(reqwest::Method::DELETE, "a", Some(CLUSTER)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn heartbeats_without_the_cluster_token_are_401_and_change_nothing(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let before = d.state().await;
    let body = hb("b").to_string();
    for token in [
        None,
        Some("wrong-token-wrong-token-wrong"),
        Some(ADMIN),
        Some(&CLUSTER[..CLUSTER.len() - 1]),
    ] {
        let r = d.post_raw(token, body.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    }
    let r = d
        .http
        .post(d.url("/v1/heartbeat"))
        .header("authorization", format!("Basic {CLUSTER}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(d.state().await, before);
    let m = d.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tether_discovery_heartbeats_total{outcome=\"unauthorized\"}"
        ),
        5.0
    );
}

async fn an_id_held_by_a_live_server_is_409_until_it_is_evicted(store: Store) {
    let (interval, ttl) = store.short_ttl();
    let d = Discovery::with(store, |c| {
        c.heartbeat_interval = interval;
        c.ttl = ttl;
    })
    .await;
    d.heartbeat(&hb("a")).await;
    let before = d.state().await;
    let mut thief = hb("a");
    thief["url"] = json!("http://127.0.0.1:10/other");
    let r = d.post_raw(Some(CLUSTER), thief.to_string()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "id_conflict");
    assert_eq!(body["field"], "id");
    assert_eq!(d.state().await, before);
    assert_eq!(
        d.metric("tether_discovery_heartbeats_total{outcome=\"conflict\"}")
            .await,
        1.0
    );
    // Once the holder's TTL has run out, the id is free.
    tokio::time::sleep(ttl).await;
    eventually(Duration::from_secs(10), "the id is free", || async {
        d.post_raw(Some(CLUSTER), thief.to_string()).await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(
        d.list().await["servers"][0]["url"],
        "http://127.0.0.1:10/other"
    );
}

async fn bad_heartbeats_are_400_naming_the_field_and_change_nothing(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let before = d.state().await;
    let good = r#""region":"eu","url":"http://127.0.0.1:9","healthy":true"#;
    let cases: Vec<(&str, String)> = vec![
        ("body", "{not json".into()),
        ("body", String::new()),
        ("body", "[1,2]".into()),
        ("body", format!(r#"{{"id":"b","load":1,{good}}} trailing"#)),
        ("id", format!(r#"{{"load":1,{good}}}"#)),
        ("load", format!(r#"{{"id":"b",{good}}}"#)),
        (
            "healthy",
            r#"{"id":"b","region":"eu","url":"http://127.0.0.1:9","load":1}"#.into(),
        ),
        ("load", format!(r#"{{"id":"b","load":"1",{good}}}"#)),
        ("load", format!(r#"{{"id":"b","load":"NaN",{good}}}"#)),
        ("load", format!(r#"{{"id":"b","load":1e999,{good}}}"#)),
        ("load", format!(r#"{{"id":"b","load":-0.5,{good}}}"#)),
        (
            "healthy",
            r#"{"id":"b","region":"eu","url":"http://127.0.0.1:9","load":1,"healthy":"yes"}"#
                .into(),
        ),
        (
            "draining",
            format!(r#"{{"id":"b","load":1,"draining":1,{good}}}"#),
        ),
        ("id", format!(r#"{{"id":7,"load":1,{good}}}"#)),
        ("id", format!(r#"{{"id":"","load":1,{good}}}"#)),
        ("id", format!(r#"{{"id":"a b","load":1,{good}}}"#)),
        (
            "id",
            format!(r#"{{"id":"{}","load":1,{good}}}"#, "x".repeat(129)),
        ),
        (
            "region",
            r#"{"id":"b","region":"","url":"http://127.0.0.1:9","load":1,"healthy":true}"#.into(),
        ),
        (
            "url",
            r#"{"id":"b","region":"eu","url":"ftp://127.0.0.1:9","load":1,"healthy":true}"#.into(),
        ),
        (
            "url",
            r#"{"id":"b","region":"eu","url":"javascript:alert(1)","load":1,"healthy":true}"#
                .into(),
        ),
        (
            "url",
            r#"{"id":"b","region":"eu","url":"not a url","load":1,"healthy":true}"#.into(),
        ),
        (
            "url",
            r#"{"id":"b","region":"eu","url":"http://u:p@h:9","load":1,"healthy":true}"#.into(),
        ),
        (
            "colour",
            format!(r#"{{"id":"b","load":1,"colour":"red",{good}}}"#),
        ),
    ];
    for (field, body) in &cases {
        let r = d.post_raw(Some(CLUSTER), body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"], "invalid_request", "{body}");
        assert_eq!(err["field"], *field, "{body}: {err}");
        assert!(
            err["detail"].as_str().is_some_and(|s| !s.is_empty()),
            "{err}"
        );
        assert_eq!(d.state().await, before, "the registry changed after {body}");
    }
    let bad = d
        .metric("tether_discovery_heartbeats_total{outcome=\"bad_request\"}")
        .await;
    assert_eq!(bad, cases.len() as f64);
}

async fn bodies_over_the_limit_are_413_naming_body(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let before = d.state().await;
    let mut big = hb("b");
    big["padding"] = json!("x".repeat(64 * 1024));
    let r = d.post_raw(Some(CLUSTER), big.to_string()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["field"], "body");
    // Chunked, with no Content-Length to refuse early.
    let (status, body) = chunked_heartbeat(d.running.local_addr(), 80, 1024).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains(r#""field":"body""#), "{body}");
    assert_eq!(d.state().await, before);
    assert_eq!(
        d.metric("tether_discovery_heartbeats_total{outcome=\"too_large\"}")
            .await,
        2.0
    );
    // Just under the limit is parsed (and refused for its content).
    let mut fits = hb("b");
    fits["padding"] = json!("x".repeat(60 * 1024));
    let r = d.post_raw(Some(CLUSTER), fits.to_string()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "padding");
}

/// Posts `chunks` chunks of `size` spaces with `Transfer-Encoding: chunked`
/// over a raw connection; returns the status and the body.
async fn chunked_heartbeat(
    addr: std::net::SocketAddr,
    chunks: usize,
    size: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/heartbeat HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {CLUSTER}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{size:x}\r\n{}\r\n", " ".repeat(size));
    for _ in 0..chunks {
        // The server may answer and close before reading everything.
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn warm_up_answers_503_but_takes_heartbeats() {
    let d = Discovery::with(Store::Memory, |c| c.warmup = Duration::from_millis(700)).await;
    let ack = d.heartbeat(&hb("a")).await;
    let r = d.http.get(d.url("/v1/servers")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "warming_up");
    assert_eq!(
        d.metric("tether_discovery_snapshot_requests_total{status=\"503\"}")
            .await,
        1.0
    );
    eventually(Duration::from_secs(5), "the warm-up ends", || async {
        let r = d.http.get(d.url("/v1/servers")).send().await.unwrap();
        r.status() != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let list = d.list().await;
    assert_eq!(list["version"], ack["registryVersion"]);
    assert_eq!(list["servers"][0]["id"], "a");
}

async fn metrics_expose_every_series(store: Store) {
    let d = Discovery::start(store).await;
    d.heartbeat(&hb("a")).await;
    let mut us = hb("u");
    us["region"] = json!("us");
    us["healthy"] = json!(false);
    d.heartbeat(&us).await;
    d.list().await;
    let m = d.metrics().await;
    for series in [
        "tether_discovery_heartbeats_total{outcome=\"accepted\"} 2",
        "tether_discovery_heartbeats_total{outcome=\"bad_request\"} 0",
        "tether_discovery_heartbeats_total{outcome=\"unauthorized\"} 0",
        "tether_discovery_heartbeats_total{outcome=\"conflict\"} 0",
        "tether_discovery_heartbeats_total{outcome=\"too_large\"} 0",
        "tether_discovery_live_servers{region=\"eu\"} 1",
        "tether_discovery_evictions_total 0",
        "tether_discovery_snapshot_requests_total{status=\"200\"} 1",
        "tether_discovery_snapshot_requests_total{status=\"304\"} 0",
        "tether_discovery_snapshot_requests_total{status=\"503\"} 0",
        "tether_discovery_longpoll_waiters 0",
        "tether_discovery_servers 2",
    ] {
        assert!(m.lines().any(|l| l == series), "missing {series:?} in\n{m}");
    }
    assert!(
        !m.contains("region=\"us\"} 1"),
        "an unhealthy server is not live"
    );
    let version = d.list().await["version"].as_f64().unwrap();
    assert_eq!(d.metric("tether_discovery_registry_version").await, version);
}

async fn health_unknown_paths_and_wrong_methods_answer_json(store: Store) {
    let d = Discovery::start(store).await;
    let r = d.http.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status":"ok"}));
    let r = d.http.get(d.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    for (method, path) in [
        (reqwest::Method::GET, "/v1/heartbeat"),
        (reqwest::Method::POST, "/v1/servers"),
        (reqwest::Method::GET, "/v1/servers/a/drain"),
        (reqwest::Method::DELETE, "/healthz"),
    ] {
        let r = d
            .http
            .request(method.clone(), d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "method_not_allowed"
        );
    }
}

fn tether() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.env("TETHER_CLUSTER_TOKEN", CLUSTER)
        .env("TETHER_ADMIN_TOKEN", ADMIN)
        .env("TETHER_LOG", "warn");
    cmd
}

#[tokio::test]
async fn the_binary_serves_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("discovery.toml");
    std::fs::write(
        &config,
        "[discovery]\nlisten = \"127.0.0.1:0\"\nwarmup_ms = 0\ncluster_token_env = \"TETHER_CLUSTER_TOKEN\"\nadmin_token_env = \"TETHER_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    // Its first stdout line is the ready line.
    let started = Spawn::tether("discovery")
        .env("TETHER_CLUSTER_TOKEN", CLUSTER)
        .env("TETHER_ADMIN_TOKEN", ADMIN)
        .env("TETHER_LOG", "warn")
        .args(["discovery", "--config"])
        .arg(&config)
        .log(&dir.path().join("discovery.log"))
        .ready("")
        .ready_within(Duration::from_secs(30))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let line = started.first();
    let base = line
        .strip_prefix("tether discovery listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        .to_owned();
    let child = started.proc;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/heartbeat"))
        .bearer_auth(CLUSTER)
        .body(hb("bin-1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = http
        .get(format!("{base}/v1/servers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["servers"][0]["id"], "bin-1");
    drop(child);
}

/// Copies the shipped config into `dir`, with stand-ins for the token files
/// it names (the real ones come from `tether keygen` and are not committed).
fn shipped_config_in(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/discovery.toml"))
        .unwrap();
    let table: toml::Table = text.parse().unwrap();
    for (key, value) in table["discovery"].as_table().unwrap() {
        if key.ends_with("_token_file") {
            let file = dir.join(value.as_str().unwrap());
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, format!("{key}-0123456789abcdef\n")).unwrap();
        }
    }
    let config = dir.join("discovery.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn tether_check_validates_discovery_configs() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_config_in(dir.path());
    let out = tether().arg("check").arg(&shipped).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (discovery config)"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[discovery]\nttl_ms = 100\ncluster_token_env = \"TETHER_CLUSTER_TOKEN\"\nadmin_token_env = \"TETHER_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    let out = tether().arg("check").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("discovery.ttl_ms = 100: must be at least heartbeat_interval_ms (2000)"),
        "{err}"
    );

    // Without its secret the config is refused, naming where it looked.
    let no_secret = dir.path().join("no-secret.toml");
    std::fs::write(
        &no_secret,
        "[discovery]\ncluster_token_file = \"missing/cluster.token\"\nadmin_token_env = \"TETHER_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    let out = tether().arg("check").arg(&no_secret).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("discovery.cluster_token_file = \"missing/cluster.token\""),
        "{err}"
    );
    let from_env = dir.path().join("env.toml");
    std::fs::write(
        &from_env,
        "[discovery]\ncluster_token_env = \"TETHER_CLUSTER_TOKEN\"\nadmin_token_env = \"TETHER_ADMIN_TOKEN\"\n",
    )
    .unwrap();
    let out = tether().arg("check").arg(&from_env).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tether()
        .arg("check")
        .arg(&from_env)
        .env_remove("TETHER_CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("discovery.cluster_token_env"));
}

on_both_stores!(
    heartbeat_then_listed_with_every_field,
    steady_heartbeats_keep_the_version_and_a_wrong_content_type_is_fine,
    silence_past_the_ttl_evicts,
    etag_round_trip,
    long_poll_wakes_on_a_change,
    long_poll_wakes_on_an_eviction,
    long_poll_times_out_cleanly_and_answers_at_once_without_a_match,
    bad_wait_is_a_400_naming_wait,
    shutdown_releases_parked_long_polls,
    drain_needs_the_admin_token_is_sticky_and_can_be_undone,
    heartbeats_without_the_cluster_token_are_401_and_change_nothing,
    an_id_held_by_a_live_server_is_409_until_it_is_evicted,
    bad_heartbeats_are_400_naming_the_field_and_change_nothing,
    bodies_over_the_limit_are_413_naming_body,
    metrics_expose_every_series,
    health_unknown_paths_and_wrong_methods_answer_json
);
