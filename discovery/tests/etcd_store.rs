//! Discovery over a real etcd (docs/design.md §6a): two in-process discovery
//! nodes sharing one cluster started by the kit, driven over HTTP.

mod kit;

use std::time::Duration;

use kit::{eventually, hb, Etcd, Node, ADMIN, CLUSTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A 64-hex-digit stand-in for a token-id hash (`c` is a hex digit).
fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rotate(family: &str, presented: char, successor: char, iat: u64) -> Value {
    json!({
        "family": family,
        "presented": hash(presented),
        "successor": hash(successor),
        "iat": iat,
        "srv": "eu-1",
        "rgn": "eu",
        "expiresAt": unix_now() + 3600,
    })
}

async fn rotate_on(node: &Node, body: &Value) -> Value {
    let r = node.post("/v1/families/rotate", CLUSTER, body).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn revoked_families(listing: &Value) -> Vec<String> {
    listing["revokedFamilies"]
        .as_array()
        .map(|a| a.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_list_conflict_and_eviction_by_lease() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |_| {}).await;
    let b = Node::over(&etcd, |_| {}).await;

    let ack = a.beat(&hb("eu-1", "http://10.0.0.1:8080", 1.0)).await;
    assert_eq!(ack["ttlMs"], 2000);
    // Read-your-writes on the node that took the heartbeat.
    assert_eq!(a.ids().await, vec!["eu-1"]);
    eventually(10, "node B lists eu-1", || async {
        (b.ids().await == vec!["eu-1"]).then_some(())
    })
    .await;

    // The id is held by a live server with another URL: 409 on either node.
    let r = b.heartbeat(&hb("eu-1", "http://10.0.0.9:8080", 1.0)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "id");
    assert!(
        body["detail"].as_str().unwrap().contains("10.0.0.1"),
        "{body}"
    );

    // The same server heartbeating through the other node is fine.
    b.beat(&hb("eu-1", "http://10.0.0.1:8080", 1.0)).await;
    assert!(
        a.metric("tether_discovery_store_seconds_count{op=\"keep_alive\"}")
            .await
            + b.metric("tether_discovery_store_seconds_count{op=\"keep_alive\"}")
                .await
            >= 1.0
    );

    // Silence: the lease expires and both nodes drop the server.
    eventually(15, "eu-1 evicted on both nodes", || async {
        (a.ids().await.is_empty() && b.ids().await.is_empty()).then_some(())
    })
    .await;
    // The eviction moved the version; a node started now (which never saw
    // the server) reports the very same version: it replays the deletion.
    let evicted_at = a.list().await["version"].as_u64().unwrap();
    assert_eq!(b.list().await["version"].as_u64().unwrap(), evicted_at);
    let c = Node::over(&etcd, |_| {}).await;
    assert_eq!(c.list().await["version"].as_u64().unwrap(), evicted_at);
    // The id is free again, for another URL.
    a.beat(&hb("eu-1", "http://10.0.0.9:8080", 1.0)).await;
    eventually(10, "the new holder is listed on B", || async {
        let l = b.list().await;
        (l["servers"][0]["url"] == "http://10.0.0.9:8080").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_etags_and_long_polls_agree_across_nodes() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |c| c.ttl = Duration::from_secs(30)).await;
    let b = Node::over(&etcd, |c| c.ttl = Duration::from_secs(30)).await;
    for i in 0..3 {
        a.beat(&hb(&format!("s{i}"), &format!("http://10.0.0.{i}:1"), 1.0))
            .await;
    }
    let (version, etag) = eventually(10, "both nodes at one version", || async {
        let la = a.list().await;
        let (_, etag_b, lb) = b.get("", None).await;
        let ids = |l: &Value| {
            l["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].clone())
                .collect::<Vec<_>>()
        };
        (la["version"] == lb["version"] && ids(&la) == ids(&lb) && ids(&la).len() == 3)
            .then(|| (la["version"].as_u64().unwrap(), etag_b))
    })
    .await;
    // An ETag from B is honoured by A.
    let (status, etag_a, _) = a.get("", Some(&etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(etag_a, etag);
    // Unchanged heartbeats do not move the version.
    for i in 0..3 {
        b.beat(&hb(&format!("s{i}"), &format!("http://10.0.0.{i}:1"), 1.0))
            .await;
    }
    assert_eq!(a.list().await["version"].as_u64().unwrap(), version);

    // A long-poll on A wakes on a change made through B.
    let poll = {
        let http = a.http.clone();
        let url = a.url("/v1/servers?wait=20");
        let etag = etag.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = http
                .get(url)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            (
                r.status(),
                r.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    eventually(10, "the long-poll is parked", || async {
        (a.metric("tether_discovery_longpoll_waiters").await >= 1.0).then_some(())
    })
    .await;
    b.beat(&hb("s9", "http://10.0.0.9:1", 1.0)).await;
    let (status, body, took) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body["version"].as_u64().unwrap() > version);
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == "s9"));
    // And the two nodes agree on the new version too.
    eventually(10, "same version after the change", || async {
        (a.list().await["version"] == b.list().await["version"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_and_revocations_survive_a_restart_of_every_node() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let mut a = Node::over(&etcd, |_| {}).await;
    let mut b = Node::over(&etcd, |_| {}).await;

    // Adopted on A, the retry on B gets the same successor (grace).
    assert_eq!(
        rotate_on(&a, &rotate("fam1", 'a', 'b', 1)).await["outcome"],
        "rotated"
    );
    let r = rotate_on(&b, &rotate("fam1", 'a', 'c', 2)).await;
    assert_eq!(
        (r["outcome"].as_str(), r["iat"].as_u64()),
        (Some("grace"), Some(1))
    );

    // Twenty concurrent rotations of the same token over both nodes: one
    // rotates, every other one gets that very successor.
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let node_http = if i % 2 == 0 {
                a.http.clone()
            } else {
                b.http.clone()
            };
            let url = if i % 2 == 0 {
                a.url("/v1/families/rotate")
            } else {
                b.url("/v1/families/rotate")
            };
            let body = rotate("fam1", 'b', if i % 2 == 0 { 'd' } else { 'e' }, 100 + i);
            tokio::spawn(async move {
                node_http
                    .post(url)
                    .bearer_auth(CLUSTER)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let rotated: Vec<&Value> = answers
        .iter()
        .filter(|r| r["outcome"] == "rotated")
        .collect();
    assert_eq!(rotated.len(), 1, "{answers:?}");
    let iat = &rotated[0]["iat"];
    assert!(answers.iter().all(|r| r["iat"] == *iat), "{answers:?}");

    // A live family on which we will test reuse after the restart.
    rotate_on(&a, &rotate("fam2", '1', '2', 1)).await;
    rotate_on(&a, &rotate("fam2", '2', '3', 2)).await;
    // Reuse of 'a' (two generations old) revokes fam1; logout revokes fam3.
    assert_eq!(
        rotate_on(&b, &rotate("fam1", 'a', 'f', 9)).await["outcome"],
        "revoked"
    );
    let r = a
        .post(
            "/v1/families/revoke",
            ADMIN,
            &json!({"family": "fam3", "expiresAt": unix_now() + 600}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(revoked_families(&a.list().await), vec!["fam1", "fam3"]);
    // Node b learns the revocation made through a from its watch: give it
    // a moment (bounded) before the exact check.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while revoked_families(&b.list().await).len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(revoked_families(&b.list().await), vec!["fam1", "fam3"]);
    let version_before = a.list().await["version"].as_u64().unwrap();

    // Every discovery node goes away; two new ones start (no grace window,
    // so an old token is reuse at once).
    a.stop().await;
    b.stop().await;
    let c = Node::over(&etcd, |cfg| cfg.refresh_grace = Duration::ZERO).await;
    let d = Node::over(&etcd, |cfg| cfg.refresh_grace = Duration::ZERO).await;
    for n in [&c, &d] {
        let l = n.list().await;
        assert_eq!(revoked_families(&l), vec!["fam1", "fam3"]);
        assert!(l["version"].as_u64().unwrap() >= version_before);
        // Still revoked: even the newest token of fam1.
        let r = rotate_on(n, &rotate("fam1", 'd', '9', 10)).await;
        assert_eq!(r["outcome"], "revoked");
    }
    // fam2's state survived: '2' is the previous token, so it is reuse now.
    assert_eq!(
        rotate_on(&c, &rotate("fam2", '2', '4', 3)).await["outcome"],
        "revoked"
    );
    eventually(10, "fam2 revoked on both new nodes", || async {
        (revoked_families(&d.list().await) == vec!["fam1", "fam2", "fam3"]).then_some(())
    })
    .await;
    assert!(
        c.metric("tether_discovery_store_leases{kind=\"family\"}")
            .await
            >= 1.0
    );
}

/// A rotation etcd applied just before every node went down (its answer
/// lost with the node) leaves the client holding the old token; proxies
/// hand that one back while no node answers. After an outage longer than
/// the grace window, that token must still get the grace answer: the
/// window counts time with discovery up, not the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_just_before_every_node_went_down_keeps_its_grace() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let grace = |cfg: &mut tether_discovery::Config| cfg.refresh_grace = Duration::from_secs(2);
    let mut a = Node::over(&etcd, grace).await;
    assert_eq!(
        rotate_on(&a, &rotate("fam1", 'a', 'b', 1)).await["outcome"],
        "rotated"
    );
    a.stop().await;
    // Down longer than the grace window (and the 3 s outage gap).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = Node::over(&etcd, grace).await;
    let r = rotate_on(&b, &rotate("fam1", 'a', 'c', 2)).await;
    assert_eq!(
        (r["outcome"].as_str(), r["iat"].as_u64()),
        (Some("grace"), Some(1)),
        "the old token gets its successor: {r}"
    );
    // Past the window with discovery up, a replay is reuse, as always.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rotate_on(&b, &rotate("fam1", 'a', 'd', 3)).await["outcome"],
        "revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_marks_live_in_etcd() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |c| c.ttl = Duration::from_secs(30)).await;
    let b = Node::over(&etcd, |c| c.ttl = Duration::from_secs(30)).await;
    let server = hb("eu-1", "http://10.0.0.1:1", 1.0);
    a.beat(&server).await;
    eventually(10, "B lists eu-1", || async {
        (b.ids().await == vec!["eu-1"]).then_some(())
    })
    .await;

    let drain = |node: &Node, method: reqwest::Method, id: &str| {
        node.http
            .request(method, node.url(&format!("/v1/servers/{id}/drain")))
            .bearer_auth(ADMIN)
            .send()
    };
    let r = drain(&b, reqwest::Method::POST, "eu-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["draining"], true);
    assert_eq!(
        drain(&b, reqwest::Method::POST, "nobody")
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    eventually(10, "A lists eu-1 draining", || async {
        (a.list().await["servers"][0]["draining"] == true).then_some(())
    })
    .await;
    // The server's own heartbeat (not draining) does not undo the mark.
    a.beat(&server).await;
    b.beat(&json!({"id": "eu-1", "region": "eu", "url": "http://10.0.0.1:1", "load": 9.0, "healthy": true})).await;
    assert_eq!(b.list().await["servers"][0]["draining"], true);
    // DELETE undoes it, through the other node.
    let r = drain(&a, reqwest::Method::DELETE, "eu-1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["draining"], false);
    eventually(10, "B lists eu-1 not draining", || async {
        (b.list().await["servers"][0]["draining"] == false).then_some(())
    })
    .await;
}

async fn check_deltas(a: &Node, b: &Node, evicts: bool) {
    for i in 0..5 {
        a.beat(&hb(&format!("s{i}"), &format!("http://10.0.0.{i}:1"), 1.0))
            .await;
    }
    let v = eventually(10, "B caught up", || async {
        let va = a.list().await["version"].clone();
        (b.list().await["version"] == va).then(|| va.as_u64().unwrap())
    })
    .await;

    // `since` = current: an empty delta.
    let (status, etag, d) = b.get(&format!("?since={v}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag, format!("\"{v}\""));
    assert_eq!(
        d,
        json!({"version": v, "full": false, "changed": [], "removed": [], "revokedFamilies": []})
    );

    // One material change: one entry, well under 1 KiB.
    a.beat(&hb("s3", "http://10.0.0.3:1", 40.0)).await;
    let (d, size) = eventually(10, "B sees the change", || async {
        let r = b
            .http
            .get(b.url(&format!("/v1/servers?since={v}")))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        let d: Value = serde_json::from_str(&text).unwrap();
        (d["version"].as_u64().unwrap() > v).then_some((d, text.len()))
    })
    .await;
    assert_eq!(d["full"], false);
    assert_eq!(d["changed"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["changed"][0]["id"], "s3");
    assert_eq!(d["changed"][0]["load"], 40.0);
    assert!(size < 1024, "{size} bytes: {d}");
    let v2 = d["version"].as_u64().unwrap();

    // From the future (another deployment, or a bogus value): the full
    // snapshot. (Too old is checked per store below.)
    for since in [v2 + 1_000_000] {
        let (_, _, d) = b.get(&format!("?since={since}"), None).await;
        assert_eq!(d["full"], true, "since={since}: {d}");
        assert_eq!(d["changed"].as_array().unwrap().len(), 5);
    }
    // `wait` combines with `since`: it waits for the next change.
    let poll = {
        let http = b.http.clone();
        let url = b.url(&format!("/v1/servers?since={v2}&wait=20"));
        tokio::spawn(async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    eventually(10, "the delta long-poll is parked", || async {
        (b.metric("tether_discovery_longpoll_waiters").await >= 1.0).then_some(())
    })
    .await;
    a.beat(&hb("s5", "http://10.0.0.5:1", 1.0)).await;
    let d = poll.await.unwrap();
    assert_eq!(d["full"], false);
    let ids: Vec<&str> = d["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["s5"]);
    // A bad since names the field.
    let r = b
        .http
        .get(b.url("/v1/servers?since=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "since");

    if evicts {
        // Keep s0 alive, let the others go: they show up as removed.
        let v3 = b.list().await["version"].as_u64().unwrap();
        let d = eventually(20, "evictions in a delta", || async {
            a.beat(&hb("s0", "http://10.0.0.0:1", 1.0)).await;
            let (_, _, d) = b.get(&format!("?since={v3}"), None).await;
            (d["removed"].as_array().unwrap().len() == 5).then_some(d)
        })
        .await;
        assert_eq!(d["removed"], json!(["s1", "s2", "s3", "s4", "s5"]));
        assert_eq!(d["full"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_over_etcd() {
    let etcd = Etcd::start(1).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |_| {}).await;
    let b = Node::over(&etcd, |_| {}).await;
    check_deltas(&a, &b, true).await;
    // A node started now cannot answer for history before its start (as
    // after compaction): older `since` values get the full snapshot;
    // current ones an empty delta.
    let c = Node::over(&etcd, |_| {}).await;
    let v = c.list().await["version"].as_u64().unwrap();
    let (_, _, d) = c.get("?since=1", None).await;
    assert_eq!(d["full"], true, "{d}");
    assert_eq!(d["version"].as_u64().unwrap(), v, "{d}");
    let (_, _, d) = c.get(&format!("?since={v}"), None).await;
    assert_eq!(d["full"], false, "{d}");
    assert!(d["changed"].as_array().unwrap().is_empty(), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_in_memory() {
    let mut config = tether_discovery::Config::loopback(CLUSTER, ADMIN);
    config.ttl = Duration::from_secs(2);
    let a = Node::start(config).await;
    // Versions start at the start time: 0 is older than anything.
    let (_, _, d) = a.get("?since=0", None).await;
    assert_eq!(d["full"], true, "{d}");
    check_deltas(&a, &a, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_lost_the_service_continues() {
    let mut etcd = Etcd::start(3).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |c| c.ttl = Duration::from_secs(5)).await;
    let b = Node::over(&etcd, |c| c.ttl = Duration::from_secs(5)).await;
    a.beat(&hb("s0", "http://10.0.0.0:1", 1.0)).await;
    etcd.kill_member(0);
    // After at most a re-election, both nodes take heartbeats and list.
    let last = std::sync::Mutex::new(String::new());
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut seen = Vec::new();
            for (node, id) in [(&a, "s0"), (&b, "s1")] {
                let r = node
                    .heartbeat(&hb(id, &format!("http://10.0.0.{}:1", &id[1..]), 1.0))
                    .await;
                seen.push((r.status(), r.text().await.unwrap()));
            }
            for node in [&a, &b] {
                let (status, _, body) = node.get("", None).await;
                let two = body["servers"].as_array().is_some_and(|s| s.len() == 2);
                seen.push((
                    if two { status } else { StatusCode::IM_A_TEAPOT },
                    body.to_string(),
                ));
            }
            if seen.iter().all(|(s, _)| *s == StatusCode::OK) {
                return;
            }
            *last.lock().unwrap() = format!("{seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "no steady service through the two remaining members; last answers: {}",
        last.lock().unwrap()
    );
    // Steady service from now on: ten rounds, every answer 200.
    for round in 0..10 {
        for (node, id) in [(&a, "s0"), (&b, "s1")] {
            let r = node
                .heartbeat(&hb(id, &format!("http://10.0.0.{}:1", &id[1..]), 1.0))
                .await;
            let status = r.status();
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}: {}",
                r.text().await.unwrap()
            );
            let (status, _, body) = node.get("", None).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quorum_answers_503_and_recovers_by_itself() {
    let mut etcd = Etcd::start(3).await;
    etcd.wait_ready().await;
    let a = Node::over(&etcd, |c| c.ttl = Duration::from_secs(5)).await;
    a.beat(&hb("s0", "http://10.0.0.0:1", 1.0)).await;
    etcd.kill_member(1);
    etcd.kill_member(2);
    let body = eventually(20, "503 without quorum", || async {
        let (status, _, body) = a.get("", None).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(body["error"], "store_unavailable", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("etcd"), "{body}");
    let r = a.heartbeat(&hb("s0", "http://10.0.0.0:1", 1.0)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = a
        .post("/v1/families/rotate", CLUSTER, &rotate("f", 'a', 'b', 1))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    eventually(10, "probe errors counted, store down", || async {
        (a.metric("tether_discovery_store_errors_total{op=\"probe\"}")
            .await
            >= 1.0
            && a.metric("tether_discovery_store_up").await == 0.0)
            .then_some(())
    })
    .await;

    etcd.restart_member(1);
    etcd.restart_member(2);
    // Back without a manual step; the server survived (leases are renewed
    // when a leader is elected).
    eventually(30, "service again with quorum", || async {
        let ok = a
            .heartbeat(&hb("s0", "http://10.0.0.0:1", 1.0))
            .await
            .status()
            == StatusCode::OK;
        let (status, _, l) = a.get("", None).await;
        (ok && status == StatusCode::OK && l["servers"][0]["id"] == "s0").then_some(())
    })
    .await;
    assert_eq!(a.metric("tether_discovery_store_up").await, 1.0);
}
