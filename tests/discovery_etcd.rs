//! Discovery that survives (docs/design.md §6a, §6b), end to end with real
//! processes: three etcd members, two discovery nodes over them, three
//! proxies listing both nodes (`discovery.urls`), and clients logging in,
//! calling the app and refreshing while members and nodes die.
//!
//! The first test is the headline: SDK clients (`tether-client`,
//! through the kit's `Workflows`) run the sample app's order workflow in a
//! loop while an etcd member and then the discovery node in use die; no
//! workflow fails, nobody is signed out, the app's own records hold
//! exactly what the workflows wrote, and every proxy is on the other node
//! within one registry poll. The others drive the token endpoints with raw
//! HTTP, where a test needs a token in hand (a replay, a revoked family).
//!
//! `all_discovery_down_past_the_access_ttl_…` runs about 80 s on purpose:
//! the shortest access-token lifetime is 60 s, and the point is to
//! outlive it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What the proxies are in front of.
enum Apps {
    /// One echo app per proxy, all in region `eu` (`eu-1` … `eu-3`).
    Echo(Vec<Upstream>),
    /// The sample app (`tether sample-app`), one listener per region, the
    /// regions replicating to each other; proxies `eu-1`, `us-1`, `ap-1`.
    Sample(SampleApp),
}

struct Deployment {
    etcd: Etcd,
    c: Cluster,
    /// The second discovery node (the first is `c.discovery`).
    b: Discovery,
    proxies: Vec<Proxy>,
    apps: Apps,
}

/// The proxies' `discovery.poll_wait_seconds` in the workflow test: the
/// longest a registry poll lasts, so "within one poll" is this.
const POLL_WAIT: Duration = Duration::from_secs(2);

impl Deployment {
    /// Echo apps behind the proxies; a 500 ms grace window at discovery,
    /// so a replay is reuse a second later.
    async fn start(access_ttl: u64) -> Deployment {
        let mut apps = Vec::new();
        for i in 1..=3 {
            apps.push(Upstream::start(&format!("app-{i}")).await);
        }
        let upstreams = apps
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("eu-{}", i + 1), "eu".to_owned(), a.addr))
            .collect();
        Deployment::over(
            access_ttl,
            "refresh_grace_ms = 500",
            "",
            upstreams,
            Apps::Echo(apps),
        )
        .await
    }

    /// The sample app in three regions behind the proxies (with
    /// `discovery_extra` at discovery); registry polls of at most
    /// [`POLL_WAIT`].
    async fn with_sample_app(discovery_extra: &str) -> Deployment {
        let regions = ["eu", "us", "ap"];
        let app = SampleApp::start(
            &[
                "--regions",
                "eu,us,ap",
                "--lag-ms",
                "50",
                "--jitter-ms",
                "0",
                "--users",
                "20",
            ],
            regions.len(),
        );
        let upstreams = regions
            .iter()
            .map(|r| {
                let url = &app.urls[*r];
                let addr: SocketAddr = url
                    .trim_start_matches("http://")
                    .parse()
                    .expect("app address");
                (format!("{r}-1"), (*r).to_owned(), addr)
            })
            .collect();
        let poll = format!("poll_wait_seconds = {}", POLL_WAIT.as_secs());
        Deployment::over(60, discovery_extra, &poll, upstreams, Apps::Sample(app)).await
    }

    /// Three etcd members, two discovery nodes over them (with
    /// `discovery_extra`), one proxy per `(id, region, upstream)` listing
    /// both nodes (with `proxy_discovery_extra` in `[discovery]`).
    async fn over(
        access_ttl: u64,
        discovery_extra: &str,
        proxy_discovery_extra: &str,
        upstreams: Vec<(String, String, SocketAddr)>,
        apps: Apps,
    ) -> Deployment {
        let etcd = Etcd::start(3).await;
        let mut c = Cluster::new(Timing {
            heartbeat_ms: 300,
            ttl_ms: 2000,
            warmup_ms: 0,
            health_interval_ms: 200,
        });
        c.etcd_endpoints = Some(etcd.endpoints());
        c.discovery_extra = discovery_extra.into();
        c.start_discovery(0);
        let b = c.start_extra_discovery("b");
        let urls = [c.discovery_url(), b.url.clone()];
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let mut proxies = Vec::new();
        for (id, region, addr) in &upstreams {
            let p = c
                .proxy(id, region)
                .upstream_addr(*addr)
                .access_ttl(access_ttl)
                .discovery_urls(&urls)
                .section("discovery", proxy_discovery_extra)
                .start()
                .await;
            proxies.push(p);
        }
        let ids: Vec<&str> = upstreams.iter().map(|(id, _, _)| id.as_str()).collect();
        for p in &proxies {
            p.wait_sees(&c.http, &ids).await;
        }
        Deployment {
            etcd,
            c,
            b,
            proxies,
            apps,
        }
    }

    fn a_port(&self) -> u16 {
        self.c.discovery.as_ref().expect("node a").addr.port()
    }

    fn echo_app(&self, i: usize) -> SocketAddr {
        match &self.apps {
            Apps::Echo(apps) => apps[i].addr,
            Apps::Sample(_) => panic!("a deployment over the sample app"),
        }
    }

    /// The sample app's listeners, one per region.
    fn app_urls(&self) -> Vec<String> {
        match &self.apps {
            Apps::Sample(app) => app.urls.values().cloned().collect(),
            Apps::Echo(_) => panic!("a deployment over echo apps"),
        }
    }

    /// Kills the discovery node at `url` (a or b).
    fn kill_node(&mut self, url: &str) {
        if url == self.b.url {
            self.b.proc.kill();
        } else {
            let a = self.c.discovery.as_mut().expect("node a");
            assert_eq!(a.url, url, "not a discovery node of this deployment");
            a.proc.kill();
        }
    }
}

/// The discovery node `p` uses now: the URL whose
/// `tether_proxy_discovery_node` gauge is 1 (proxy/src/discovery_nodes.rs).
async fn node_in_use(p: &Proxy, http: &reqwest::Client) -> Option<String> {
    let text = p.metrics(http).await;
    text.lines()
        .filter(|l| l.starts_with("tether_proxy_discovery_node{") && l.ends_with(" 1"))
        .find_map(|l| {
            l.split("url=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_an_etcd_member_then_a_discovery_node_fails_no_workflow() {
    let t0 = Instant::now();
    // Discovery's default grace window (10 s), as in production.
    let mut d = Deployment::with_sample_app("").await;
    let http = d.c.http.clone();
    eprintln!("deployment up in {:?}", t0.elapsed());
    // Six users, two per proxy as their global URL; user-0001 … 0003 have
    // home regions eu, us, ap; user-0000 and user-0004 none.
    let users: Vec<(String, String)> = (0..6)
        .map(|i| (d.proxies[i % 3].url.clone(), format!("user-{i:04}")))
        .collect();
    let w = Workflows::start(&users, WorkflowOptions::default()).await;
    eprintln!("clients locked to {:?}", w.logged_in_on);
    w.wait_for_more(12, Duration::from_secs(20)).await;

    // One etcd member dies (the first, which both nodes list first); the
    // workflows go on over the other two.
    d.etcd.kill_member(0);
    let member_killed = Instant::now();
    eprintln!("etcd member 0 killed after {} workflows", w.completed());
    w.wait_for_more(12, Duration::from_secs(20)).await;
    tokio::time::sleep_until((member_killed + Duration::from_secs(3)).into()).await;

    // The discovery node the proxies use now dies (the one most of them
    // use: while both nodes' etcd watches reconnect after the member's
    // loss, the nodes answer 503 for a moment, and a proxy that met one
    // has moved on already).
    let mut using = Vec::new();
    for p in &d.proxies {
        using.push(node_in_use(p, &http).await.expect("a node in use"));
    }
    let on = |url: &str| using.iter().filter(|u| *u == url).count();
    let victim = if on(&d.b.url) > on(&d.c.discovery_url()) {
        d.b.url.clone()
    } else {
        d.c.discovery_url()
    };
    let survivor = if victim == d.b.url {
        d.c.discovery_url()
    } else {
        d.b.url.clone()
    };
    eprintln!(
        "{} workflows done ({} refreshes extended); proxies use {using:?}; killing {victim}",
        w.completed(),
        w.extended()
    );
    d.kill_node(&victim);
    let killed = Instant::now();
    // Each proxy's time to be on the survivor, polled every 20 ms.
    let mut moved: Vec<Option<Duration>> = vec![None; d.proxies.len()];
    let margin = Duration::from_secs(1);
    while moved.iter().any(Option::is_none)
        && killed.elapsed() < POLL_WAIT + margin + Duration::from_secs(10)
    {
        for (i, p) in d.proxies.iter().enumerate() {
            if moved[i].is_none() && node_in_use(p, &http).await.as_deref() == Some(&survivor) {
                moved[i] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("proxies on {survivor} after {moved:?}");
    for (i, p) in d.proxies.iter().enumerate() {
        let t = moved[i].unwrap_or_else(|| panic!("{} never moved to {survivor}", p.id));
        if using[i] == victim {
            assert!(
                t <= POLL_WAIT + margin,
                "{} moved to {survivor} {t:?} after the kill: more than one poll ({POLL_WAIT:?}) + {margin:?}",
                p.id
            );
        }
    }
    w.wait_for_more(12, Duration::from_secs(20)).await;
    tokio::time::sleep_until((killed + Duration::from_secs(3)).into()).await;

    let report = w.stop().await;
    eprintln!(
        "{} workflows in {:?} ({} refreshes extended, {} SDK resends, {} idempotent replays, {} server changes); whole test {:?}",
        report.completed,
        report.elapsed,
        report.extended,
        report.retries,
        report.replayed,
        report.server_changes,
        t0.elapsed()
    );
    assert!(
        report.failures.is_empty(),
        "{} failed workflows: {:?}",
        report.failures.len(),
        report.failures
    );
    assert!(
        report.signed_out.is_empty(),
        "signed out: {:?}",
        report.signed_out
    );
    assert!(report.completed >= 36, "{}", report.completed);
    report.check_app(&http, &d.app_urls()).await;
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

/// A discovery node's metric (its `/metrics`), 0 when absent.
async fn node_metric(http: &reqwest::Client, node: &str, prefix: &str) -> f64 {
    let text = http
        .get(format!("{node}/metrics"))
        .send()
        .await
        .expect("node metrics")
        .text()
        .await
        .expect("text");
    metric(&text, prefix).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_switching_nodes_does_not_refetch_an_unchanged_registry() {
    let mut d = Deployment::start(60).await;
    let http = d.c.http.clone();
    let a_url = d.c.discovery_url();
    let bytes = |p: &Proxy| {
        let http = http.clone();
        let admin = p.admin.clone();
        async move {
            let text = http
                .get(format!("{admin}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            metric(&text, "tether_proxy_discovery_poll_bytes_total").unwrap_or(0.0)
        }
    };
    // Settled: every proxy parked in a long poll, holding the current
    // registry. Usually all at node a (the first listed); a proxy whose
    // first call to a was slow (a loaded machine) may have moved to b and
    // stays there, so the node most of them use is the one stopped.
    let b_url = d.b.url.clone();
    let waiters = |node: String| {
        let http = http.clone();
        async move { node_metric(&http, &node, "tether_discovery_longpoll_waiters").await }
    };
    eventually(
        Duration::from_secs(30),
        "every proxy parked at a discovery node",
        || async { waiters(a_url.clone()).await + waiters(b_url.clone()).await >= 3.0 },
    )
    .await;
    let full = http
        .get(format!("{}/v1/servers", d.b.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len() as f64;
    let mut before = Vec::new();
    for p in &d.proxies {
        let node = node_in_use(p, &http).await.expect("a node in use");
        before.push((node, bytes(p).await));
    }
    let on_a = before.iter().filter(|(n, _)| *n == a_url).count();
    let (stopped, survivor) = if on_a * 2 >= before.len() {
        (a_url.clone(), b_url.clone())
    } else {
        (b_url.clone(), a_url.clone())
    };
    eprintln!(
        "{on_a} of {} proxies at node a; stopping {stopped}",
        before.len()
    );
    d.kill_node(&stopped);
    // Every proxy of the stopped node moves to the other and parks there:
    // its version and ETag held from the stopped node are current at the
    // other too.
    eventually(
        Duration::from_secs(30),
        "every proxy parked at the surviving node",
        || async { waiters(survivor.clone()).await >= 3.0 },
    )
    .await;
    for (p, (node, before)) in d.proxies.iter().zip(before) {
        assert_eq!(
            node_in_use(p, &http).await.as_deref(),
            Some(survivor.as_str())
        );
        let grown = bytes(p).await - before;
        eprintln!(
            "{}: {grown} registry bytes received (was at {node}; full listing {full} B)",
            p.id
        );
        assert!(
            grown < full / 2.0,
            "{}: {grown} B received across the switch; the full listing is {full} B",
            p.id
        );
    }
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

/// A session logged in with raw HTTP (the sample app's password), for
/// the checks that need the tokens in hand.
struct Session {
    access: String,
    refresh: String,
    server_id: String,
}

async fn login_demo(http: &reqwest::Client, url: &str, user: &str) -> Session {
    let r = http
        .post(format!("{url}/auth/login"))
        .json(&json!({"username": user, "password": "demo"}))
        .send()
        .await
        .expect("login request");
    assert_eq!(r.status(), 200, "login of {user} at {url}");
    let h = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("login answer lacks {name}"))
            .to_owned()
    };
    Session {
        access: h("tether-access-token"),
        refresh: h("tether-refresh-token"),
        server_id: h("tether-server-id"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_discovery_down_past_the_access_ttl_signs_nobody_out_and_reuse_is_caught_after() {
    let access_ttl = 60;
    // A 500 ms grace window, so a replay is reuse a second later.
    let mut d = Deployment::with_sample_app("refresh_grace_ms = 500").await;
    let http = d.c.http.clone();
    let urls: Vec<String> = d.proxies.iter().map(|p| p.url.clone()).collect();
    // SDK clients run workflows through the whole outage and past
    // discovery's return (a refresh before each one); raw sessions hold
    // their tokens for the expiry and replay checks.
    let sdk_users: Vec<(String, String)> = (0..3)
        .map(|i| (urls[i].clone(), format!("user-{:04}", 10 + i)))
        .collect();
    let w = Workflows::start(
        &sdk_users,
        WorkflowOptions {
            think: Duration::from_millis(200),
            ..WorkflowOptions::default()
        },
    )
    .await;
    let mut users = Vec::new();
    for (url, name) in urls.iter().zip(["alice", "bob", "carol"]) {
        users.push(login_demo(&http, url, name).await);
    }
    let a_port = d.a_port();
    d.c.discovery.as_mut().expect("node a").proc.kill();
    d.b.proc.kill();
    let down = Instant::now();
    // Every proxy answers refreshes in extend mode: same refresh token,
    // same server (no relock).
    for (u, url) in users.iter().zip(&urls) {
        let v = refresh_until(&http, url, &u.refresh, "extend mode", |v| {
            v["reason"] == "discovery_unavailable"
        })
        .await;
        assert_eq!(v["refreshToken"], u.refresh.as_str(), "{v}");
        assert_eq!(v["server"]["id"], u.server_id.as_str(), "no relock: {v}");
        assert_eq!(v["serverChanged"], false, "{v}");
    }
    // Past the access-token lifetime, every user still works.
    // (The kit's proxies allow 2 s of clock leeway.)
    tokio::time::sleep_until((down + Duration::from_secs(access_ttl + 2)).into()).await;
    for (u, url) in users.iter().zip(&urls) {
        eventually(
            Duration::from_secs(10),
            "the first access token has expired",
            || async {
                get(&http, &format!("{url}/stats"), Some(&u.access))
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
        assert_eq!(v["server"]["id"], u.server_id.as_str(), "no relock: {v}");
        let access = v["accessToken"].as_str().unwrap();
        assert_eq!(
            get(&http, &format!("{url}/stats"), Some(access))
                .await
                .status(),
            200
        );
    }
    let during = w.completed();
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
    // The SDK clients worked through all of it, on their first server.
    w.wait_for_more(6, Duration::from_secs(20)).await;
    let servers = w.servers();
    let logged_in_on = w.logged_in_on.clone();
    let report = w.stop().await;
    eprintln!(
        "{} workflows ({during} before discovery returned), {} refreshes extended",
        report.completed, report.extended
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        report.signed_out.is_empty(),
        "signed out: {:?}",
        report.signed_out
    );
    assert!(report.extended > 0, "no refresh was extended");
    assert_eq!(servers, logged_in_on, "no relock");
    assert_eq!(report.server_changes, 0);
    report.check_app(&http, &d.app_urls()).await;
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
            .upstream_addr(d.echo_app(0))
            .discovery_urls(&[&b.url])
            .start()
            .await;
    for p in d.proxies.iter().chain([&late]) {
        eventually(
            Duration::from_secs(15),
            "the revoked family is refused",
            || async {
                let (s, v) = refresh(&http, &p.url, json!({"refreshToken": l.refresh})).await;
                // Refused, never served: a 200 here (say, extended while
                // no node answered) would be the revoked family back.
                assert_ne!(s, 200, "{} served a revoked family: {v}", p.id);
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
    assert_eq!(v["server"]["id"], l.server_id.as_str(), "no relock: {v}");
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
