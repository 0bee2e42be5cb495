//! Refresh-token rotation with reuse detection, kept in discovery and
//! enforced by every proxy (issue 6, RFC 9700 §4.14.2).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Which store discovery keeps the families in: memory, or a one-member
/// etcd the test owns (one suite, two stores, as in tests/discovery.rs).
async fn store(etcd: bool) -> Option<Etcd> {
    if etcd {
        Some(Etcd::start(1).await)
    } else {
        None
    }
}

async fn cluster(
    grace_ms: u64,
    etcd: Option<&Etcd>,
) -> (Cluster, Upstream, Upstream, Proxy, Proxy) {
    let mut c = Cluster::new(Timing::default());
    c.etcd_endpoints = etcd.map(Etcd::endpoints);
    c.discovery_extra = format!("refresh_grace_ms = {grace_ms}");
    c.start_discovery(0);
    let app_a = Upstream::start("app-eu").await;
    let app_b = Upstream::start("app-us").await;
    let a = c.proxy("eu-1", "eu").upstream(&app_a).start().await;
    let b = c.proxy("us-1", "us").upstream(&app_b).start().await;
    a.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    b.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    (c, app_a, app_b, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_get_one_successor_and_replay_revokes_everywhere() {
    concurrent_refreshes(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_get_one_successor_and_replay_revokes_everywhere_over_etcd() {
    concurrent_refreshes(true).await
}

async fn concurrent_refreshes(etcd: bool) {
    let grace_ms = 1500;
    let etcd = store(etcd).await;
    let (c, _app_a, _app_b, a, b) = cluster(grace_ms, etcd.as_ref()).await;
    let l = login(&c.http, &a.url, "alice", None).await;

    // 50 concurrent refreshes of the same token, at both proxies.
    let calls = (0..50).map(|i| {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let (http, token) = (c.http.clone(), l.refresh.clone());
        tokio::spawn(async move {
            refresh(
                &http,
                &url,
                json!({"refreshToken": token, "closestServerId": "eu-1"}),
            )
            .await
        })
    });
    let results = futures::future::join_all(calls).await;
    let mut successors = std::collections::BTreeSet::new();
    for r in results {
        let (status, v) = r.unwrap();
        assert_eq!(status, 200, "{v}");
        successors.insert(v["refreshToken"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        successors.len(),
        1,
        "exactly one successor was issued: {successors:?}"
    );
    let successor = successors.into_iter().next().unwrap();
    assert_ne!(successor, l.refresh, "a new refresh token every refresh");

    // The successor rotates normally.
    let (s, v) = refresh(&c.http, &b.url, json!({"refreshToken": successor})).await;
    assert_eq!(s, 200, "{v}");
    let third = v["refreshToken"].as_str().unwrap().to_owned();
    let access = v["accessToken"].as_str().unwrap().to_owned();

    // Replaying the first token after the window: reuse. 401, and the
    // whole family is revoked at every proxy within one poll.
    tokio::time::sleep(Duration::from_millis(grace_ms + 200)).await;
    let (s, v) = refresh(&c.http, &a.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "invalid_token");
    for p in [&a, &b] {
        let (s, _) = refresh(&c.http, &p.url, json!({"refreshToken": third})).await;
        assert_eq!(
            s, 401,
            "the family's newest refresh token is refused at {}",
            p.id
        );
    }
    // Access tokens of the family: refused everywhere within a poll.
    let locked = if v["server"]["id"] == "us-1" { &b } else { &a };
    eventually(
        Duration::from_secs(2),
        "access token of a revoked family refused",
        || async {
            let mut all = true;
            for p in [&a, &b] {
                let r = get(&c.http, &format!("{}/x", p.url), Some(&access)).await;
                all &= r.status() == 401;
            }
            all
        },
    )
    .await;
    let _ = locked;
    let m = a.metrics(&c.http).await;
    assert!(metric(&m, "tether_proxy_refresh_rejected_total{cause=\"reused\"").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_at_one_proxy_revokes_at_all() {
    logout_revokes(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_at_one_proxy_revokes_at_all_over_etcd() {
    logout_revokes(true).await
}

async fn logout_revokes(etcd: bool) {
    let etcd = store(etcd).await;
    let (c, _app_a, _app_b, a, b) = cluster(10_000, etcd.as_ref()).await;
    let l = login(&c.http, &a.url, "bob", None).await;
    let r = c
        .http
        .post(format!("{}/auth/logout", a.url))
        .json(&json!({"refreshToken": l.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"revoked": true})
    );
    let (s, _) = refresh(&c.http, &b.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 401, "the other proxy refuses the logged-out family");
    eventually(
        Duration::from_secs(2),
        "access token refused after logout",
        || async {
            get(&c.http, &format!("{}/x", a.url), Some(&l.access))
                .await
                .status()
                == 401
        },
    )
    .await;
    // Other users are untouched.
    let other = login(&c.http, &a.url, "carol", None).await;
    assert_eq!(
        get(&c.http, &format!("{}/x", a.url), Some(&other.access))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_down_policy() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let closed = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .tokens_extra("refresh_when_discovery_down = \"fail_closed\"")
        .start()
        .await;
    let open = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .tokens_extra("refresh_when_discovery_down = \"fail_open\"")
        .start()
        .await;
    let lc = login(&c.http, &closed.url, "alice", None).await;
    let lo = login(&c.http, &open.url, "bob", None).await;
    c.discovery.as_mut().unwrap().proc.kill();

    // Fail-closed: no refresh without reuse detection...
    let (s, v) = refresh(&c.http, &closed.url, json!({"refreshToken": lc.refresh})).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "refresh_unavailable");
    // ...but access tokens already issued keep working.
    assert_eq!(
        get(&c.http, &format!("{}/x", closed.url), Some(&lc.access))
            .await
            .status(),
        200
    );
    // Fail-open: refresh goes on, untracked.
    let (s, v) = refresh(&c.http, &open.url, json!({"refreshToken": lo.refresh})).await;
    assert_eq!(s, 200, "{v}");
    // A config with an unknown policy is refused, naming the key.
    let bad = open.config.with_file_name("bad.toml");
    let text = std::fs::read_to_string(&open.config)
        .unwrap()
        .replace("fail_open", "fail_sideways");
    std::fs::write(&bad, text).unwrap();
    let out = std::process::Command::new(TETHER)
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens.refresh_when_discovery_down"));
}
