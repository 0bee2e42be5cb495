//! The proxy side of surviving discovery (issue 12, docs/design.md §6a and
//! §6b): several discovery nodes with failover, registry polls by delta,
//! and refreshes while no discovery node answers ("extend").
//!
//! Discovery here is the in-memory store (one or two processes); the
//! etcd-backed multi-node runs live in their own suite.
//!
//! `all_discovery_down_longer_than_the_access_lifetime` runs about 75 s on
//! purpose: the shortest allowed access-token lifetime is 60 s
//! (`tokens.access_ttl_seconds`), and the point is to outlive it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Keeps fake servers alive at one discovery node (heartbeats every
/// 300 ms, well inside the test TTL of 1.2 s) until dropped.
struct FakeServers(tokio::task::JoinHandle<()>);

impl FakeServers {
    /// `ids[i]` at `http://127.0.0.1:<base_port + i>` (nothing listens).
    fn start(
        http: &reqwest::Client,
        discovery: &str,
        token: &str,
        ids: Vec<String>,
        base_port: u16,
    ) -> Self {
        let (http, url, token) = (
            http.clone(),
            format!("{discovery}/v1/heartbeat"),
            token.to_owned(),
        );
        FakeServers(tokio::spawn(async move {
            loop {
                for (i, id) in ids.iter().enumerate() {
                    let body = json!({"id": id, "region": "ap", "load": 0.0, "healthy": true,
                        "url": format!("http://127.0.0.1:{}", base_port as usize + i)});
                    let _ = http.post(&url).bearer_auth(&token).json(&body).send().await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }))
    }
}

impl Drop for FakeServers {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn metric_of(p: &Proxy, http: &reqwest::Client, prefix: &str) -> f64 {
    metric(&p.metrics(http).await, prefix).unwrap_or(0.0)
}

/// `tether_proxy_discovery_node{…url="<url>"…}`: 1 in use, 0 not.
fn node_gauge(text: &str, url: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("tether_proxy_discovery_node{"))
        .find(|l| l.contains(&format!("url=\"{url}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_first_discovery_node_moves_proxies_to_the_second() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let a_url = c.discovery_url();
    // Started second, so its versions (Unix microseconds at start) are
    // above anything the first has handed out.
    let b = c.start_extra_discovery("b");
    let app = Upstream::start("app").await;
    let urls = [a_url.as_str(), b.url.as_str()];
    let p1 = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .discovery_urls(&urls)
        .start()
        .await;
    let p2 = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .discovery_urls(&urls)
        .start()
        .await;
    p1.wait_sees(&c.http, &["eu-1", "eu-2"]).await;
    p2.wait_sees(&c.http, &["eu-1", "eu-2"]).await;
    let text = p1.metrics(&c.http).await;
    assert_eq!(node_gauge(&text, &a_url), Some(1.0), "{text}");
    assert_eq!(node_gauge(&text, &b.url), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "tether_proxy_discovery_failovers_total"),
        Some(0.0)
    );
    let l = login(&c.http, &p1.url, "alice", None).await;

    c.discovery.as_mut().unwrap().proc.kill();
    let killed = Instant::now();
    for p in [&p1, &p2] {
        eventually(
            Duration::from_secs(5),
            &format!("{} uses the second node", p.id),
            || async {
                let text = p.metrics(&c.http).await;
                node_gauge(&text, &b.url) == Some(1.0) && node_gauge(&text, &a_url) == Some(0.0)
            },
        )
        .await;
    }
    eprintln!("both proxies moved within {:?}", killed.elapsed());
    assert!(metric_of(&p1, &c.http, "tether_proxy_discovery_failovers_total").await >= 1.0);
    let log = std::fs::read_to_string(c.path("proxy.eu-1.log")).unwrap();
    assert!(
        log.contains(&format!("using {} now", b.url)),
        "the switch is logged:\n{log}"
    );

    // Serving goes on: the access token, and a refresh (rotated at the
    // second node, not extended).
    assert_eq!(
        get(&c.http, &format!("{}/x", p1.url), Some(&l.access))
            .await
            .status(),
        200
    );
    let (s, v) = refresh(&c.http, &p1.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["reason"], "discovery_unavailable", "{v}");
    assert_ne!(v["refreshToken"], l.refresh.as_str(), "rotated: {v}");

    // The registry keeps up through the second node: a server that only
    // ever heartbeats there shows up at both proxies, and both proxies
    // heartbeat there now.
    let _fake = FakeServers::start(
        &c.http,
        &b.url,
        &c.cluster_token(),
        vec!["ap-9".to_owned()],
        20_000,
    );
    p1.wait_sees(&c.http, &["eu-1", "eu-2", "ap-9"]).await;
    p2.wait_sees(&c.http, &["eu-1", "eu-2", "ap-9"]).await;
    let listed: serde_json::Value = c
        .http
        .get(format!("{}/v1/servers", b.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: BTreeSet<&str> = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains("eu-1") && ids.contains("eu-2"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_deltas_and_the_view_matches_the_listing() {
    // A TTL well above the fake servers' heartbeat round, so none is
    // evicted (and re-added) while the bytes are counted.
    let mut c = Cluster::new(Timing {
        ttl_ms: 5000,
        ..Timing::default()
    });
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let p = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let fakes: Vec<String> = (0..40).map(|i| format!("ap-{i}")).collect();
    let _many = FakeServers::start(
        &c.http,
        &c.discovery_url(),
        &c.cluster_token(),
        fakes,
        20_000,
    );
    p.wait_sees(&c.http, &["eu-1", "ap-0", "ap-39"]).await;
    let full = c
        .http
        .get(format!("{}/v1/servers", c.discovery_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len() as f64;
    let before = metric_of(&p, &c.http, "tether_proxy_discovery_poll_bytes_total").await;
    assert!(before > 0.0);

    // One change: a server joins.
    let _one = FakeServers::start(
        &c.http,
        &c.discovery_url(),
        &c.cluster_token(),
        vec!["us-new".to_owned()],
        21_000,
    );
    p.wait_sees(&c.http, &["us-new"]).await;
    let after = metric_of(&p, &c.http, "tether_proxy_discovery_poll_bytes_total").await;
    let grown = after - before;
    eprintln!("full listing {full} B; the proxy received {grown} B for the change");
    assert!(grown > 0.0);
    assert!(
        grown < full / 4.0,
        "a delta, not the whole registry again: {grown} B vs {full} B"
    );

    // The view built from deltas is the listing.
    let key = |v: &serde_json::Value| -> (u64, BTreeSet<String>) {
        let servers = v["servers"].as_array().cloned().unwrap_or_default();
        (
            v["version"].as_u64().unwrap_or(0),
            servers
                .iter()
                .map(|s| format!("{} {} {} {}", s["id"], s["url"], s["region"], s["healthy"]))
                .collect(),
        )
    };
    eventually(
        Duration::from_secs(10),
        "proxy view == discovery listing",
        || async {
            let listed = c.servers().await;
            let view = p.registry(&c.http).await;
            key(&listed) == key(&view)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_discovery_down_longer_than_the_access_lifetime() {
    let mut c = Cluster::new(Timing::default());
    c.discovery_extra = "refresh_grace_ms = 300".to_owned();
    c.start_discovery(0);
    let port = c.discovery.as_ref().unwrap().addr.port();
    let app = Upstream::start("app").await;
    // The default policy ("extend"); the shortest access lifetime.
    let p = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .access_ttl(60)
        .start()
        .await;
    let q = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .access_ttl(60)
        .start()
        .await;
    p.wait_sees(&c.http, &["eu-1", "eu-2"]).await;
    let l = login(&c.http, &p.url, "alice", None).await;
    assert_eq!(l.server_id, "eu-1");

    c.discovery.as_mut().unwrap().proc.kill();
    let down = Instant::now();
    let mut access = l.access.clone();
    let mut extended = 0;
    // Past the login's access token (60 s + 2 s leeway), refreshing every
    // 10 s as a client would.
    while down.elapsed() < Duration::from_secs(66) {
        let (s, v) = refresh(
            &c.http,
            &p.url,
            json!({"refreshToken": l.refresh, "closestServerId": "eu-1"}),
        )
        .await;
        assert_eq!(s, 200, "refresh while discovery is down: {v}");
        assert_eq!(v["reason"], "discovery_unavailable", "{v}");
        assert_eq!(v["refreshToken"], l.refresh.as_str(), "nothing rotated");
        assert_eq!(v["server"]["id"], "eu-1", "no relock: {v}");
        assert_eq!(v["serverChanged"], false, "{v}");
        access = v["accessToken"].as_str().unwrap().to_owned();
        extended += 1;
        let r = get(&c.http, &format!("{}/x", p.url), Some(&access)).await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // The login's own access token has expired: access kept working only
    // through the re-minted ones.
    let old = get(&c.http, &format!("{}/x", p.url), Some(&l.access)).await;
    assert_eq!(old.status(), 401, "the first access token expired");
    assert_eq!(
        get(&c.http, &format!("{}/x", p.url), Some(&access))
            .await
            .status(),
        200
    );
    assert_eq!(
        metric_of(&p, &c.http, "tether_proxy_refresh_extended_total").await,
        extended as f64
    );

    // Discovery returns (same port). A copy of the refresh token was taken
    // during the outage; the user refreshes first and rotates...
    let copied = l.refresh.clone();
    c.start_discovery(port);
    let (s, v) = refresh(&c.http, &p.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["reason"], "discovery_unavailable", "rotated again: {v}");
    let rotated = v["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(
        rotated, copied,
        "the first refresh after the outage rotates"
    );
    // ...then the copy is presented (after the grace window, at another
    // proxy): reuse, and the family is revoked everywhere.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, v) = refresh(&c.http, &q.url, json!({"refreshToken": copied})).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = refresh(&c.http, &p.url, json!({"refreshToken": rotated})).await;
    assert_eq!(s, 401, "the family is revoked: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_is_bounded_by_max_extend_seconds() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let port = c.discovery.as_ref().unwrap().addr.port();
    let app = Upstream::start("app").await;
    let p = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .tokens_extra("max_extend_seconds = 3")
        .start()
        .await;
    let l = login(&c.http, &p.url, "alice", None).await;
    c.discovery.as_mut().unwrap().proc.kill();
    let (s, v) = refresh(&c.http, &p.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "within the bound: {v}");
    assert_eq!(v["reason"], "discovery_unavailable");
    // Past the bound: as fail_closed.
    eventually(
        Duration::from_secs(15),
        "refresh refused after max_extend_seconds",
        || async {
            let (s, v) = refresh(&c.http, &p.url, json!({"refreshToken": l.refresh})).await;
            s == 503 && v["error"] == "refresh_unavailable"
        },
    )
    .await;
    // Access tokens already issued are untouched.
    assert_eq!(
        get(&c.http, &format!("{}/x", p.url), Some(&l.access))
            .await
            .status(),
        200
    );
    // Discovery back: refreshes rotate again.
    c.start_discovery(port);
    let (s, v) = refresh(&c.http, &p.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["refreshToken"], l.refresh.as_str());
}
