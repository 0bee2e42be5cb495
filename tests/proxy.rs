//! End-to-end tests of the lock-enforcing proxy: real `tether discovery`
//! and `tether proxy` processes, real upstream apps, loopback sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn two_regions(timing: Timing) -> (Cluster, Upstream, Upstream, Proxy, Proxy) {
    let mut c = Cluster::new(timing);
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
async fn login_then_local_forward_with_verified_identity() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app-eu").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;

    let l = login(&c.http, &a.url, "alice", None).await;
    assert_eq!(l.server_id, "eu-1");
    assert_eq!(l.server_region, "eu");
    assert_eq!(l.server_url, a.url);
    assert_eq!(l.expires_in, 120);
    assert_eq!(
        l.body["welcome"], "hi",
        "login body passes through untouched"
    );

    // Headers of the login answer: the app's cookies pass, its attempt to
    // speak the lock protocol does not.
    let r = c
        .http
        .post(format!("{}/auth/login", a.url))
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["set-cookie"], "app=1");
    assert!(r.headers().get("tether-relock").is_none());

    // A rejected login passes through with no tokens.
    let r = c
        .http
        .post(format!("{}/auth/login", a.url))
        .json(&json!({"username": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("tether-access-token").is_none());

    let r = c
        .http
        .get(format!("{}/orders/1", a.url))
        .bearer_auth(&l.access)
        .header("x-tether-subject", "mallory")
        .header("X-Tether-Server", "us-1")
        .header("tether-server-id", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "app-eu");
    assert_eq!(v["subject"], "alice");
    assert_eq!(v["server"], "eu-1");
    let seen = app.last().unwrap();
    assert_eq!(seen.headers["x-tether-subject"], "alice");
    assert!(
        !seen.headers.contains_key("tether-server-id"),
        "client-supplied Tether-* stripped"
    );

    // Public prefixes need no token and get no identity.
    let r = get(&c.http, &format!("{}/public/logo", a.url), None).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["subject"].is_null());

    // Outcomes are counted in Pingora's logging phase, just after the
    // answer is written: give the last one a moment.
    eventually(
        Duration::from_secs(2),
        "request outcomes counted",
        || async {
            metric(
                &a.metrics(&c.http).await,
                "tether_proxy_requests_total{outcome=\"public\"",
            ) == Some(1.0)
        },
    )
    .await;
    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"forwarded\""),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"public\""),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "tether_proxy_logins_total{outcome=\"ok\""),
        Some(2.0)
    );
    assert!(metric(&m, "tether_proxy_upstream_seconds_count").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_lock_gets_relock_hint_or_one_forwarded_hop() {
    let (c, app_a, app_b, a, b) = two_regions(Timing::default()).await;
    let app_c = Upstream::start("app-us2").await;
    let fwd = c
        .proxy("us-2", "us")
        .upstream(&app_c)
        .forward()
        .start()
        .await;
    fwd.wait_sees(&c.http, &["eu-1", "us-1", "us-2"]).await;

    let l = login(&c.http, &a.url, "alice", None).await;

    // Redirect mode: 421 naming A.
    let r = get(&c.http, &format!("{}/orders/7", b.url), Some(&l.access)).await;
    assert_eq!(r.status(), 421);
    assert_eq!(r.headers()["tether-relock"], a.url.as_str());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "wrong_server");
    assert_eq!(
        v["lockedServer"],
        json!({"id": "eu-1", "url": a.url, "region": "eu"})
    );
    assert_eq!(app_b.requests(), 0);

    // Forward mode: served by A's upstream, one hop.
    let before = app_a.requests();
    let r = get(&c.http, &format!("{}/orders/8", fwd.url), Some(&l.access)).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "app-eu");
    assert_eq!(v["subject"], "alice");
    assert_eq!(app_a.requests(), before + 1);
    assert_eq!(app_c.requests(), 0);
    assert!(
        !app_a.last().unwrap().headers.contains_key("x-tether-hop"),
        "hop marker never reaches the app"
    );

    // A request that already made its hop is never forwarded again.
    let key = tether_proxy::hop::HopKey::derive(&c.cluster_token());
    let now = tether_proxy::tokens::unix_now();
    let marker = key.sign("GET", "/orders/9", now, "us-2");
    let r = c
        .http
        .get(format!("{}/orders/9", b.url))
        .bearer_auth(&l.access)
        .header("x-tether-hop", &marker)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 508);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "forward_loop"
    );

    // A genuine marker is accepted once at the locked server; replayed, it
    // is refused.
    let marker = key.sign("GET", "/orders/11", now, "us-2");
    for (attempt, want) in [(1, 200), (2, 403)] {
        let r = c
            .http
            .get(format!("{}/orders/11", a.url))
            .bearer_auth(&l.access)
            .header("x-tether-hop", &marker)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "attempt {attempt} with the same marker");
    }

    // Forged, stale or replayed-on-another-path markers are refused.
    let forged = tether_proxy::hop::HopKey::derive("not-the-cluster-token").sign(
        "GET",
        "/orders/9",
        now,
        "us-2",
    );
    let stale = key.sign("GET", "/orders/9", now - 120, "us-2");
    let other_path = key.sign("GET", "/orders/10", now, "us-2");
    for bad in [forged, stale, other_path, "garbage".to_owned()] {
        let r = c
            .http
            .get(format!("{}/orders/9", fwd.url))
            .bearer_auth(&l.access)
            .header("x-tether-hop", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "marker {bad}");
    }
    assert_eq!(app_b.requests(), 0);
    assert_eq!(app_c.requests(), 0);
    drop((a, b, fwd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_places_clients_by_the_policy() {
    let (c, _app_a, _app_b, a, b) = two_regions(Timing::default()).await;
    let l = login(&c.http, &a.url, "alice", None).await;
    // Every refresh rotates the refresh token: a client uses the newest.
    let next = |v: &serde_json::Value| v["refreshToken"].as_str().unwrap().to_owned();

    // Critical task: kept, even though the closest server is elsewhere.
    let (s, v) = refresh(&c.http, &b.url, json!({"refreshToken": l.refresh, "closestServerId": "us-1", "criticalTaskInProgress": true})).await;
    let rt = next(&v);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["server"]["id"], "eu-1");
    assert_eq!(v["serverChanged"], false);
    assert_eq!(v["previousServerId"], "eu-1");
    assert_eq!(v["reason"], "critical_task");
    assert_eq!(v["tokenType"], "Bearer");
    assert_eq!(v["expiresIn"], 120);

    // Closest in another region: moved there.
    let (s, v) = refresh(
        &c.http,
        &b.url,
        json!({"refreshToken": rt, "closestServerId": "us-1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let rt = next(&v);
    assert_eq!(
        v["server"],
        json!({"id": "us-1", "url": b.url, "region": "us"})
    );
    assert_eq!(v["serverChanged"], true);
    assert_eq!(v["previousServerId"], "eu-1");
    assert_eq!(v["reason"], "moved_region");
    // The new access token works at the new server.
    let r = get(&c.http, &format!("{}/x", b.url), v["accessToken"].as_str()).await;
    assert_eq!(r.status(), 200);

    // Same region: a busy server hands the client to the least-loaded one.
    let busy = tokio::spawn({
        let c_http = c.http.clone();
        let url = c.discovery_url();
        let token = c.cluster_token();
        async move {
            loop {
                let _ = c_http
                    .post(format!("{url}/v1/heartbeat"))
                    .bearer_auth(&token)
                    .json(&json!({"id": "eu-busy", "region": "eu", "url": "http://127.0.0.1:9", "load": 50.0, "healthy": true}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    a.wait_sees(&c.http, &["eu-busy"]).await;
    let (_, busy_refresh) = mint(&a.config, "bob", "eu-busy", "eu");
    let (s, v) = refresh(
        &c.http,
        &a.url,
        json!({"refreshToken": busy_refresh, "closestServerId": "eu-1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["server"]["id"], "eu-1");
    assert_eq!(v["serverChanged"], true);
    assert_eq!(v["previousServerId"], "eu-busy");
    assert_eq!(v["reason"], "same_region_least_load");
    busy.abort();

    // Same region, equal loads: kept (the client is on us-1 now, closest us-1).
    let (s, v) = refresh(&c.http, &b.url, json!({"refreshToken": rt})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["server"]["id"].as_str(),
            v["reason"].as_str(),
            v["serverChanged"].as_bool()
        ),
        (Some("us-1"), Some("kept"), Some(false))
    );

    // Home region: a user whose home is "us" logging in at A is locked in
    // us, and stays there even when the closest server is in eu.
    let carol = login(&c.http, &a.url, "carol", Some("us")).await;
    assert_eq!(carol.server_id, "us-1");
    assert_eq!(carol.server_url, b.url);
    let (s, v) = refresh(
        &c.http,
        &a.url,
        json!({"refreshToken": carol.refresh, "closestServerId": "eu-1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["server"]["id"], "us-1");
    assert_eq!(v["serverChanged"], false);
    assert_eq!(v["reason"], "kept");

    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(
            &m,
            "tether_proxy_refresh_decisions_total{reason=\"same_region_least_load\""
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rejects_bad_input_naming_the_field() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let cases = [
        ("{not json".to_owned(), 400, "body"),
        ("{}".to_owned(), 400, "refreshToken"),
        (json!({"refreshToken": 5}).to_string(), 400, "refreshToken"),
        (
            json!({"refreshToken": l.refresh, "criticalTaskInProgress": "yes"}).to_string(),
            400,
            "criticalTaskInProgress",
        ),
        (
            json!({"refreshToken": l.refresh, "closestServerId": "http://evil/"}).to_string(),
            400,
            "closestServerId",
        ),
        (
            json!({"refreshToken": l.refresh, "unreachableServerId": ""}).to_string(),
            400,
            "unreachableServerId",
        ),
        (
            json!({"refreshToken": l.refresh, "extra": 1}).to_string(),
            400,
            "extra",
        ),
        (json!({"refreshToken": l.access}).to_string(), 401, ""),
        (json!({"refreshToken": "garbage"}).to_string(), 401, ""),
        (
            json!({"refreshToken": "x".repeat(20_000)}).to_string(),
            413,
            "body",
        ),
    ];
    for (body, status, field) in cases {
        let r = c
            .http
            .post(format!("{}/auth/refresh", a.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            status,
            "body {}",
            &body[..body.len().min(80)]
        );
        let v: serde_json::Value = r.json().await.unwrap();
        if status == 400 || status == 413 {
            assert_eq!(v["field"], field, "{v}");
        } else {
            assert_eq!(v["error"], "invalid_token");
        }
    }
    // Wrong method on a reserved path.
    let r = get(&c.http, &format!("{}/auth/refresh", a.url), None).await;
    assert_eq!(r.status(), 405);

    // Logout revokes the family: the refresh token stops working here.
    let r = c
        .http
        .post(format!("{}/auth/logout", a.url))
        .json(&json!({"refreshToken": l.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = refresh(&c.http, &a.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(
        (s, v["detail"].as_str()),
        (401, Some("token has been revoked"))
    );
    assert_eq!(app.requests(), 1, "only the login reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_replaced_fast_then_evicted() {
    let timing = Timing {
        heartbeat_ms: 300,
        ttl_ms: 4000,
        ..Timing::default()
    };
    let (c, _app_a, _app_b, mut a, b) = two_regions(timing).await;
    let l = login(&c.http, &a.url, "alice", None).await;

    // Naming a live server as unreachable does not move the client.
    let (s, v) = refresh(&c.http, &b.url, json!({"refreshToken": l.refresh, "closestServerId": "eu-1", "unreachableServerId": "eu-1"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["server"]["id"].as_str(), v["serverChanged"].as_bool()),
        (Some("eu-1"), Some(false))
    );
    // Rotation: the client continues with the newest refresh token; the
    // first one is kept aside to check the "after the TTL" path below.
    let rt = v["refreshToken"].as_str().unwrap().to_owned();

    // Probe results are reused for about a second; let that one expire.
    tokio::time::sleep(tether_proxy::probe::PROBE_CACHE + Duration::from_millis(100)).await;
    a.proc.kill();
    let killed = Instant::now();
    let (_, rt_later) = mint(&b.config, "alice", "eu-1", "eu");
    let (s, v) = refresh(
        &c.http,
        &b.url,
        json!({"refreshToken": rt, "closestServerId": "us-1", "unreachableServerId": "eu-1"}),
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["server"]["id"], "us-1");
    assert_eq!(v["serverChanged"], true);
    assert_eq!(v["reason"], "server_down");
    assert!(
        took < Duration::from_millis(2000),
        "fast failover took {took:?}"
    );
    // Discovery has not evicted A yet: the probe made the difference.
    let listed = c.servers().await;
    assert!(
        listed["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "eu-1"),
        "{listed}"
    );
    println!(
        "fast failover: new lock {took:?} after the kill (TTL {} ms)",
        timing.ttl_ms
    );

    // B remembers what its probe found: A's clients are told to refresh at
    // once instead of being hinted to a dead server.
    let r = get(&c.http, &format!("{}/orders/1", b.url), Some(&l.access)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["tether-relock"], "refresh");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"].as_str(), v["action"].as_str()),
        (Some("server_unavailable"), Some("refresh"))
    );

    // Discovery evicts A after its TTL, not before; then every proxy's
    // registry drops it and its tokens get 503 refresh from the registry
    // alone.
    let deadline = Instant::now() + Duration::from_millis(timing.ttl_ms + 4000);
    let evicted_after = loop {
        let listed = c.servers().await;
        if !listed["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "eu-1")
        {
            break killed.elapsed();
        }
        assert!(Instant::now() < deadline, "A was never evicted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        evicted_after >= Duration::from_millis(timing.ttl_ms - 500),
        "evicted before the TTL: {evicted_after:?}"
    );
    b.wait_gone(&c.http, "eu-1").await;
    let r = get(&c.http, &format!("{}/orders/1", b.url), Some(&l.access)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["tether-relock"], "refresh");
    // A client still locked to eu-1 (a fresh family, minted for the test)
    // refreshes after the eviction: server_down, no probe needed.
    let (s, v) = refresh(&c.http, &b.url, json!({"refreshToken": rt_later})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["server"]["id"], "us-1");
    assert_eq!(v["serverChanged"], true);
    assert_eq!(v["reason"], "server_down");
    let m = b.metrics(&c.http).await;
    assert!(metric(&m, "tether_proxy_failover_probes_total{result=\"dead\"").unwrap_or(0.0) >= 1.0);
    assert!(
        metric(
            &m,
            "tether_proxy_requests_total{outcome=\"server_unavailable\""
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_outage_keeps_serving_then_heals() {
    let timing = Timing {
        warmup_ms: 300,
        ..Timing::default()
    };
    let (mut c, _app_a, _app_b, a, b) = two_regions(timing).await;
    let port = c.discovery.as_ref().unwrap().addr.port();
    let la = login(&c.http, &a.url, "alice", None).await;
    let lb = login(&c.http, &b.url, "bob", None).await;
    let version_before = a.registry(&c.http).await["version"].as_u64().unwrap();

    c.discovery.as_mut().unwrap().proc.kill();
    let down = Instant::now();
    let mut served = 0;
    while down.elapsed() < Duration::from_millis(timing.ttl_ms * 2) {
        for (p, t) in [(&a, &la.access), (&b, &lb.access)] {
            let r = get(&c.http, &format!("{}/orders/1", p.url), Some(t)).await;
            assert_eq!(r.status(), 200, "served while discovery is down");
            served += 1;
        }
        // B still knows where A's clients belong.
        let r = get(&c.http, &format!("{}/orders/1", b.url), Some(&la.access)).await;
        assert_eq!(r.status(), 421);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 10);
    let m1 = a.metrics(&c.http).await;
    let stale1 = metric(&m1, "tether_proxy_registry_staleness_seconds").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale2 = metric(
        &a.metrics(&c.http).await,
        "tether_proxy_registry_staleness_seconds",
    )
    .unwrap();
    assert!(
        stale1 * 1000.0 >= timing.ttl_ms as f64,
        "staleness {stale1}"
    );
    assert!(stale2 > stale1, "staleness grows: {stale1} then {stale2}");
    assert!(metric(&m1, "tether_proxy_heartbeat_failures_total").unwrap() >= 1.0);

    c.start_discovery(port);
    eventually(
        Duration::from_secs(10),
        "registry heals after discovery returns",
        || async {
            let reg = a.registry(&c.http).await;
            let stale = metric(
                &a.metrics(&c.http).await,
                "tether_proxy_registry_staleness_seconds",
            )
            .unwrap();
            reg["version"].as_u64().unwrap() > version_before
                && reg["servers"].as_array().unwrap().len() == 2
                && stale < 1.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_503_and_recovers() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let l = login(&c.http, &a.url, "alice", None).await;

    app.healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(5), "healthz 503", || async {
        get(&c.http, &format!("{}/healthz", a.url), None)
            .await
            .status()
            == 503
    })
    .await;
    let r = get(&c.http, &format!("{}/orders/1", a.url), Some(&l.access)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "upstream_unavailable"
    );
    assert_eq!(
        get(&c.http, &format!("{}/healthz", a.admin), None)
            .await
            .status(),
        503
    );

    app.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(5), "healthz 200", || async {
        get(&c.http, &format!("{}/healthz", a.url), None)
            .await
            .status()
            == 200
    })
    .await;
    let r = get(&c.http, &format!("{}/orders/1", a.url), Some(&l.access)).await;
    assert_eq!(r.status(), 200);
    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(
            &m,
            "tether_proxy_requests_total{outcome=\"upstream_unavailable\""
        ),
        Some(1.0)
    );
}

/// Reads the HS256 secret of the cluster's key ring (for forging tokens).
fn ring_secret(c: &Cluster) -> Vec<u8> {
    let text = std::fs::read_to_string(c.path("keyring.toml")).unwrap();
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("secret_hex = \""))
        .unwrap()
        .trim_end_matches('"');
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_and_reach_nothing() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let trap = Upstream::start("trap").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let secret = ring_secret(&c);
    let now = tether_proxy::tokens::unix_now();
    let claims = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = json!({"iss": "tether-test", "aud": "tether-tests", "sub": "alice", "iat": now, "nbf": now,
            "exp": now + 100, "jti": "j", "srv": "eu-1", "rgn": "eu", "fam": "f"});
        edit(&mut v);
        v
    };
    let sign = |v: &serde_json::Value, key: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, v, &EncodingKey::from_secret(key)).unwrap()
    };
    // Sanity: the forging helper makes tokens the proxy accepts.
    let good = sign(&claims(&|_| {}), &secret);
    assert_eq!(
        get(&c.http, &format!("{}/x", a.url), Some(&good))
            .await
            .status(),
        200
    );
    let before = app.requests();

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none_token = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
        b64.encode(claims(&|_| {}).to_string())
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("garbage".into())),
        ("two segments", Some("abc.def".into())),
        ("four segments", Some(format!("{good}.x"))),
        ("alg none", Some(none_token)),
        ("wrong key", Some(sign(&claims(&|_| {}), &[9u8; 32]))),
        ("refresh as access", Some(l.refresh.clone())),
        (
            "expired beyond leeway",
            Some(sign(&claims(&|v| v["exp"] = (now - 30).into()), &secret)),
        ),
        (
            "wrong iss",
            Some(sign(&claims(&|v| v["iss"] = "evil".into()), &secret)),
        ),
        (
            "wrong aud",
            Some(sign(&claims(&|v| v["aud"] = "other".into()), &secret)),
        ),
        (
            "URL-shaped srv",
            Some(sign(
                &claims(&|v| v["srv"] = format!("http://{}", trap.addr).into()),
                &secret,
            )),
        ),
    ];
    for (name, token) in &cases {
        let r = get(&c.http, &format!("{}/orders/1", a.url), token.as_deref()).await;
        assert_eq!(r.status(), 401, "case {name}");
        // No credentials at all: the bare challenge (RFC 6750 §3.1).
        let challenge = if token.is_none() {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        assert_eq!(r.headers()["www-authenticate"], challenge, "case {name}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_token", "case {name}");
        assert!(v["detail"].is_string(), "case {name}");
    }
    // A well-formed but unknown server id: refresh, never a connection.
    let unknown = sign(&claims(&|v| v["srv"] = "zz-9".into()), &secret);
    let r = get(&c.http, &format!("{}/orders/1", a.url), Some(&unknown)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["tether-relock"], "refresh");
    assert_eq!(app.requests(), before, "nothing reached the upstream");
    assert_eq!(
        trap.requests(),
        0,
        "nothing reached an address named by a token"
    );
    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"invalid_token\""),
        Some(cases.len() as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closest_to_me_and_healthz() {
    let (c, _app_a, _app_b, a, _b) = two_regions(Timing::default()).await;
    let r = get(&c.http, &format!("{}/closestToMe", a.url), None).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"closestServerId": "eu-1", "region": "eu", "url": a.url})
    );
    let r = get(&c.http, &format!("{}/healthz", a.url), None).await;
    assert_eq!(r.status(), 200);
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_refuses_no_valid_token() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let mut a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let old = login(&c.http, &a.url, "alice", None).await;
    assert_eq!(kid_of(&old.access), "k1");

    // Load: requests with the old token and with fresh logins' tokens, all
    // of which must succeed throughout the rotation.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn({
        let (http, url, token, stop) = (
            c.http.clone(),
            a.url.clone(),
            old.access.clone(),
            stop.clone(),
        );
        async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            let mut tokens = vec![token];
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if i % 10 == 0 {
                    tokens.push(login(&http, &url, "bob", None).await.access);
                }
                for t in &tokens[tokens.len().saturating_sub(3)..] {
                    let r = get(&http, &format!("{url}/x"), Some(t)).await;
                    if r.status() == 200 {
                        ok += 1
                    } else {
                        bad.push((r.status().as_u16(), kid_of(t)))
                    }
                }
                let r = get(&http, &format!("{url}/x"), Some(&tokens[0])).await;
                if r.status() == 200 {
                    ok += 1
                } else {
                    bad.push((r.status().as_u16(), kid_of(&tokens[0])))
                }
                i += 1;
            }
            (ok, bad)
        }
    });

    let ring = c.path("keyring.toml");
    let original = std::fs::read_to_string(&ring).unwrap();
    let k1_block = &original[original.find("[[keys]]").unwrap()..];
    let k2_secret = "cd".repeat(32);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&ring, format!("signing_kid = \"k2\"\n\n{k1_block}\n[[keys]]\nkid = \"k2\"\nalg = \"HS256\"\nsecret_hex = \"{k2_secret}\"\n")).unwrap();
    // SIGHUP asks for the reload at once (the file watch would find it
    // within a second anyway).
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &a.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(
        Duration::from_secs(5),
        "new logins signed with k2",
        || async { kid_of(&login(&c.http, &a.url, "carol", None).await.access) == "k2" },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, bad) = loader.await.unwrap();
    assert!(
        bad.is_empty(),
        "valid tokens refused during rotation: {bad:?}"
    );
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert!(a.proc.is_running(), "SIGHUP reloads, it does not kill");

    // A broken file is ignored: the current keys stay.
    let failed = || async {
        metric(
            &a.metrics(&c.http).await,
            "tether_proxy_keyring_reloads_total{result=\"failed\"",
        )
        .unwrap_or(0.0)
    };
    let failed_before = failed().await;
    std::fs::write(&ring, "signing_kid = \"k9\"\n").unwrap();
    eventually(
        Duration::from_secs(5),
        "the broken key ring read and refused",
        || async { failed().await > failed_before },
    )
    .await;
    assert_eq!(
        get(&c.http, &format!("{}/x", a.url), Some(&old.access))
            .await
            .status(),
        200
    );

    // Retiring k1: its tokens stop verifying, k2's keep working.
    let new = login(&c.http, &a.url, "dave", None).await;
    std::fs::write(&ring, format!("signing_kid = \"k2\"\n[[keys]]\nkid = \"k2\"\nalg = \"HS256\"\nsecret_hex = \"{k2_secret}\"\n")).unwrap();
    eventually(Duration::from_secs(5), "k1 retired", || async {
        get(&c.http, &format!("{}/x", a.url), Some(&old.access))
            .await
            .status()
            == 401
    })
    .await;
    assert_eq!(
        get(&c.http, &format!("{}/x", a.url), Some(&new.access))
            .await
            .status(),
        200
    );
    let m = a.metrics(&c.http).await;
    assert!(
        metric(&m, "tether_proxy_keyring_reloads_total{result=\"reloaded\"").unwrap() >= 2.0,
        "{m}"
    );
    assert!(metric(&m, "tether_proxy_keyring_reloads_total{result=\"failed\"").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_and_forwarded_headers() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let trusting = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .routing_extra("trusted_proxies = [\"127.0.0.0/8\"]")
        .start()
        .await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let before = app.requests();

    // Too many header fields, or too many bytes of them: 431, not forwarded.
    let mut many = c.http.get(format!("{}/x", a.url)).bearer_auth(&l.access);
    for i in 0..150 {
        many = many.header(format!("x-filler-{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let r = c
        .http
        .get(format!("{}/x", a.url))
        .bearer_auth(&l.access)
        .header("x-big", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "request_header_fields_too_large"
    );
    assert_eq!(
        app.requests(),
        before,
        "nothing over the limits was forwarded"
    );

    // A client cannot forge its address; a trusted peer's list is extended.
    for (proxy, want_xff, want_fwd) in [
        (&a, "127.0.0.1", "for=127.0.0.1;proto=http"),
        (
            &trusting,
            "203.0.113.7, 127.0.0.1",
            "for=203.0.113.7, for=127.0.0.1;proto=http",
        ),
    ] {
        let l = login(&c.http, &proxy.url, "bob", None).await;
        let r = c
            .http
            .get(format!("{}/x", proxy.url))
            .bearer_auth(&l.access)
            .header("x-forwarded-for", "203.0.113.7")
            .header("forwarded", "for=203.0.113.7")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = app.last().unwrap();
        assert_eq!(seen.headers["x-forwarded-for"], want_xff, "at {}", proxy.id);
        assert_eq!(seen.headers["forwarded"], want_fwd, "at {}", proxy.id);
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert!(!seen.headers.contains_key("proxy-authorization"));
    }

    // Bodies pass through as the app sent them: the client's
    // Accept-Encoding reaches the app, and the proxy compresses nothing
    // (docs/proxy.md).
    let r = c
        .http
        .get(format!("{}/compressible", a.url))
        .bearer_auth(&l.access)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let body: serde_json::Value = r.json().await.expect("the app's JSON, as sent");
    assert_eq!(body["path"], "/compressible");
    assert_eq!(app.last().unwrap().headers["accept-encoding"], "gzip, br");
    // Slowloris (500 connections dripping a byte a second while a normal
    // client is served): tests/hardening.rs, with the head deadline.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_key_ring_with_jwks_and_cached_verification() {
    let mut c = Cluster::new(Timing::default());
    // Replace the cluster's HS256 ring with an Ed25519 one.
    let out = std::process::Command::new(TETHER)
        .args(["keygen", "--alg", "eddsa", "--force", "--dir"])
        .arg(c.path("eddsa"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(c.path("eddsa/keyring.toml"), c.path("keyring.toml")).unwrap();
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;

    let l = login(&c.http, &a.url, "alice", None).await;
    assert_eq!(
        jsonwebtoken::decode_header(&l.access).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    for _ in 0..3 {
        assert_eq!(
            get(&c.http, &format!("{}/x", a.url), Some(&l.access))
                .await
                .status(),
            200
        );
    }
    let jwks: serde_json::Value = get(&c.http, &format!("{}/.well-known/jwks.json", a.url), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "k1");
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    // Key confusion: an HS256 token whose "secret" is the published key.
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let now = tether_proxy::tokens::unix_now();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    h.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &h,
        &json!({"iss": "tether-test", "aud": "tether-tests", "sub": "mallory", "iat": now, "nbf": now,
                "exp": now + 100, "jti": "j", "srv": "eu-1", "rgn": "eu", "fam": "f"}),
        &jsonwebtoken::EncodingKey::from_secret(&x),
    )
    .unwrap();
    let before = app.requests();
    let r = get(&c.http, &format!("{}/x", a.url), Some(&forged)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(app.requests(), before);
    // Refresh works with EdDSA tokens too.
    let (s, v) = refresh(&c.http, &a.url, json!({"refreshToken": l.refresh})).await;
    assert_eq!(s, 200, "{v}");
}
