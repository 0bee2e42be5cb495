//! `Idempotency-Key` at the edge, end to end (docs/idempotency.md,
//! docs/design.md §9): real `tether proxy` processes in front of the real
//! `tether sample-app`, with the memory store or a private `redis-server`
//! the kit starts on an ephemeral port (never the system service).
//!
//! Orders are counted at the app (`GET /stats` of its region), so "reached
//! the app once" is what the app says, not what the proxy claims.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tether_testkit::{eventually, metric, mint, Cluster, Proxy, Redis, SampleApp, Timing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROBLEM: &str = "application/problem+json";

/// A cluster (discovery) and one sample-app region `eu` without
/// replication lag.
struct Kit {
    c: Cluster,
    app: SampleApp,
    http: reqwest::Client,
}

impl Kit {
    fn new() -> Kit {
        let mut c = Cluster::new(Timing::default());
        c.start_discovery(0);
        let app = SampleApp::start(&["--regions", "eu", "--lag-ms", "0", "--jitter-ms", "0"], 1);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Kit { c, app, http }
    }

    fn app_url(&self) -> &str {
        &self.app.urls["eu"]
    }

    fn app_addr(&self) -> SocketAddr {
        self.app_url()
            .trim_start_matches("http://")
            .parse()
            .expect("app address")
    }

    /// A proxy of region `eu` before `upstream` with these `[idempotency]`
    /// lines.
    async fn proxy(&self, id: &str, upstream: SocketAddr, idem: &str) -> Proxy {
        self.c
            .proxy(id, "eu")
            .upstream_addr(upstream)
            .idempotency(idem)
            .start()
            .await
    }

    /// Orders this app region holds.
    async fn orders(&self) -> u64 {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/stats", self.app_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["orders"].as_u64().expect("orders in /stats")
    }
}

/// A token of `sub` locked to `proxy`.
fn token(proxy: &Proxy, sub: &str) -> String {
    mint(&proxy.config, sub, &proxy.id, &proxy.region).0
}

/// What a request got, kept whole for byte comparisons.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    replayed: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn problem_type(&self) -> String {
        assert_eq!(self.content_type.as_deref(), Some(PROBLEM), "{self:?}");
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }
}

async fn post(
    http: &reqwest::Client,
    proxy: &Proxy,
    token: &str,
    key: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = http
        .post(format!("{}/orders", proxy.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.expect("request");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
    };
    Answer {
        status: r.status(),
        content_type: h("content-type"),
        replayed: h("idempotent-replayed"),
        retry_after: h("retry-after"),
        body: r.bytes().await.expect("body").to_vec(),
    }
}

fn order_body(user: &str) -> String {
    format!("{{\"userId\":\"{user}\"}}")
}

fn redis_table(r: &Redis, on_store_error: &str) -> String {
    format!(
        "enabled = true\non_store_error = \"{on_store_error}\"\n\
         store = {{ kind = \"redis\", url = \"{}\", timeout_ms = 300 }}",
        r.url()
    )
}

const MEMORY: &str = "enabled = true\nstore = { kind = \"memory\" }";

async fn metrics(k: &Kit, p: &Proxy) -> String {
    p.metrics(&k.http).await
}

fn idem_metric(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("tether_proxy_idempotency_total{{outcome=\"{outcome}\""),
    )
    .unwrap_or_else(|| panic!("no idempotency metric {outcome} in:\n{text}"))
}

/// Five retries of one POST with one key: one order at the app, and every
/// retry gets the first answer byte for byte, marked as a replay.
async fn five_retries_create_one_order(k: &Kit, p: &Proxy) {
    let alice = token(p, "alice");
    let before = k.orders().await;
    let key = "\"order-5x-8e03978e\"";
    let first = post(&k.http, p, &alice, Some(key), &order_body("alice")).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.replayed, None);
    assert!(first.json()["orderId"].is_string(), "{first:?}");
    for i in 0..5 {
        let again = post(&k.http, p, &alice, Some(key), &order_body("alice")).await;
        assert_eq!(again.status, first.status, "retry {i}");
        assert_eq!(again.body, first.body, "retry {i}: byte for byte");
        assert_eq!(again.content_type, first.content_type, "retry {i}");
        assert_eq!(again.replayed.as_deref(), Some("true"), "retry {i}");
    }
    assert_eq!(k.orders().await, before + 1, "the app saw one order");
    // The outcome is counted in the proxy's logging phase, just after the
    // answer went out: wait (bounded) for the last one.
    let mut m = metrics(k, p).await;
    for _ in 0..50 {
        if metric(&m, "tether_proxy_requests_total{outcome=\"idempotency\"") == Some(5.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        m = metrics(k, p).await;
    }
    assert_eq!(idem_metric(&m, "stored"), 1.0);
    assert_eq!(idem_metric(&m, "replayed"), 5.0);
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"idempotency\""),
        Some(5.0)
    );
    // Without a key nothing is stored: two POSTs, two orders.
    for _ in 0..2 {
        let plain = post(&k.http, p, &alice, None, &order_body("alice")).await;
        assert_eq!(plain.status, 201);
        assert_eq!(plain.replayed, None);
    }
    assert_eq!(k.orders().await, before + 3);
}

#[tokio::test]
async fn retried_post_creates_one_order_memory_store() {
    let k = Kit::new();
    let p = k.proxy("eu-1", k.app_addr(), MEMORY).await;
    five_retries_create_one_order(&k, &p).await;
    // The store's fill on /metrics: one stored answer, nothing evicted.
    let m = metrics(&k, &p).await;
    assert_eq!(
        metric(&m, "tether_proxy_idempotency_memory_records"),
        Some(1.0),
        "{m}"
    );
    assert!(metric(&m, "tether_proxy_idempotency_memory_bytes").is_some_and(|b| b > 128.0));
    assert_eq!(
        metric(&m, "tether_proxy_idempotency_memory_evicted_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn retried_post_creates_one_order_redis_store() {
    let k = Kit::new();
    let r = Redis::start();
    let p = k
        .proxy("eu-1", k.app_addr(), &redis_table(&r, "reject"))
        .await;
    five_retries_create_one_order(&k, &p).await;
}

#[tokio::test]
async fn other_body_is_422_and_other_user_is_not_replayed() {
    let k = Kit::new();
    let p = k.proxy("eu-1", k.app_addr(), MEMORY).await;
    let (alice, bob) = (token(&p, "alice"), token(&p, "bob"));
    let key = "\"shared-key\"";
    let first = post(&k.http, &p, &alice, Some(key), &order_body("alice")).await;
    assert_eq!(first.status, 201);
    let orders = k.orders().await;

    let other = post(&k.http, &p, &alice, Some(key), &order_body("bob")).await;
    assert_eq!(other.status, 422, "{other:?}");
    assert_eq!(
        other.problem_type(),
        "urn:tether:problem:idempotency-key-reused"
    );
    assert_eq!(k.orders().await, orders, "a 422 does not reach the app");

    // Bob's request with Alice's key is Bob's own record: forwarded.
    let bobs = post(&k.http, &p, &bob, Some(key), &order_body("alice")).await;
    assert_eq!(bobs.status, 201, "{bobs:?}");
    assert_eq!(bobs.replayed, None);
    assert_ne!(bobs.body, first.body);
    assert_eq!(k.orders().await, orders + 1);
    // And Bob's retry replays Bob's answer, not Alice's.
    let again = post(&k.http, &p, &bob, Some(key), &order_body("alice")).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.body, bobs.body);
    assert_eq!(idem_metric(&metrics(&k, &p).await, "mismatch_422"), 1.0);
}

/// A TCP relay in front of the app that holds every chunk that starts a
/// POST for `delay` before passing it on: the first request is still in
/// flight when the second arrives.
async fn slow_relay(app: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(app).await else {
                    return;
                };
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let to_app = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if buf[..n].starts_with(b"POST ") {
                            tokio::time::sleep(delay).await;
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = uw.shutdown().await;
                };
                let to_client = async {
                    let _ = tokio::io::copy(&mut ur, &mut dw).await;
                    let _ = dw.shutdown().await;
                };
                tokio::join!(to_app, to_client);
            });
        }
    });
    addr
}

#[tokio::test]
async fn concurrent_requests_with_one_key_reach_the_app_once() {
    let k = Kit::new();
    let relay = slow_relay(k.app_addr(), Duration::from_millis(700)).await;
    let p = k.proxy("eu-1", relay, MEMORY).await;
    let alice = token(&p, "alice");
    let before = k.orders().await;
    let key = "\"race-1\"";
    let body = order_body("alice");
    let (a, b) = tokio::join!(
        post(&k.http, &p, &alice, Some(key), &body),
        post(&k.http, &p, &alice, Some(key), &body),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{a:?}\n{b:?}");
    let conflict = if a.status == 409 { &a } else { &b };
    assert_eq!(
        conflict.problem_type(),
        "urn:tether:problem:idempotency-key-in-flight"
    );
    assert_eq!(conflict.retry_after.as_deref(), Some("1"));
    assert_eq!(k.orders().await, before + 1, "exactly one reached the app");
    // The retry after the conflict gets the stored answer.
    let winner = if a.status == 201 { &a } else { &b };
    let retry = post(&k.http, &p, &alice, Some(key), &body).await;
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(retry.body, winner.body);
    assert_eq!(k.orders().await, before + 1);
}

#[tokio::test]
async fn a_retry_through_the_other_proxy_of_the_region_is_replayed() {
    let k = Kit::new();
    let r = Redis::start();
    let table = redis_table(&r, "reject");
    let p1 = k.proxy("eu-1", k.app_addr(), &table).await;
    let p2 = k.proxy("eu-2", k.app_addr(), &table).await;
    let before = k.orders().await;
    let key = "\"failover-1\"";
    let first = post(
        &k.http,
        &p1,
        &token(&p1, "alice"),
        Some(key),
        &order_body("alice"),
    )
    .await;
    assert_eq!(first.status, 201);
    // Alice was placed on eu-2 since (a refresh after eu-1 failed): her
    // retry arrives there with a token for eu-2 and the same key.
    let retry = post(
        &k.http,
        &p2,
        &token(&p2, "alice"),
        Some(key),
        &order_body("alice"),
    )
    .await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.replayed.as_deref(), Some("true"));
    assert_eq!(retry.body, first.body);
    assert_eq!(k.orders().await, before + 1);
    assert_eq!(idem_metric(&metrics(&k, &p2).await, "replayed"), 1.0);
}

#[tokio::test]
async fn redis_killed_mid_run_gives_the_documented_answers() {
    let k = Kit::new();
    let mut r = Redis::start();
    let mut strict = k
        .proxy("eu-1", k.app_addr(), &redis_table(&r, "reject"))
        .await;
    let mut lenient = k
        .proxy("eu-2", k.app_addr(), &redis_table(&r, "forward"))
        .await;
    let (ta, tb) = (token(&strict, "alice"), token(&lenient, "alice"));
    let body = order_body("alice");
    let first = post(&k.http, &strict, &ta, Some("\"before-outage\""), &body).await;
    assert_eq!(first.status, 201);

    r.kill();
    let orders = k.orders().await;
    // reject: 503 problem+json with Retry-After, the app untouched.
    for key in ["\"before-outage\"", "\"during-outage\""] {
        let a = post(&k.http, &strict, &ta, Some(key), &body).await;
        assert_eq!(a.status, 503, "{key}: {a:?}");
        assert_eq!(
            a.problem_type(),
            "urn:tether:problem:idempotency-store-unavailable"
        );
        assert_eq!(a.retry_after.as_deref(), Some("2"));
    }
    assert_eq!(k.orders().await, orders);
    // A request without a key is not covered: forwarded as usual.
    let plain = post(&k.http, &strict, &ta, None, &body).await;
    assert_eq!(plain.status, 201);
    // forward: no de-duplication while the store is down.
    let f1 = post(&k.http, &lenient, &tb, Some("\"outage-fwd\""), &body).await;
    let f2 = post(&k.http, &lenient, &tb, Some("\"outage-fwd\""), &body).await;
    assert_eq!(
        (f1.status, f2.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(f2.replayed, None);
    assert_eq!(k.orders().await, orders + 3);
    assert!(
        strict.proc.is_running() && lenient.proc.is_running(),
        "no panic"
    );
    assert!(idem_metric(&metrics(&k, &strict).await, "store_error") >= 2.0);
    assert!(idem_metric(&metrics(&k, &lenient).await, "store_error") >= 2.0);

    // The outage ends (an empty Redis): keys work again without a restart
    // of the proxies.
    r.restart();
    let key = "\"after-outage\"";
    let answered = Arc::new(tokio::sync::Mutex::new(None));
    eventually(
        Duration::from_secs(10),
        "the proxy reconnects to redis",
        || {
            let (http, strict, ta, body, answered) =
                (&k.http, &strict, &ta, &body, answered.clone());
            async move {
                let a = post(http, strict, ta, Some(key), body).await;
                let ok = a.status == 201;
                *answered.lock().await = Some(a);
                ok
            }
        },
    )
    .await;
    let first = answered.lock().await.clone().expect("an answer");
    let again = post(&k.http, &strict, &ta, Some(key), &body).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(again.body, first.body);
}

/// Sends a raw HTTP/1.1 POST whose `Idempotency-Key` value is `key` bytes
/// exactly (reqwest refuses most of them), and returns the status code and
/// the whole answer.
async fn raw_post(p: &Proxy, token: &str, key: Option<&[u8]>, body: &str) -> (u16, String) {
    let mut req = format!(
        "POST /orders HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        p.addr,
        body.len()
    )
    .into_bytes();
    if let Some(k) = key {
        req.extend_from_slice(b"Idempotency-Key: ");
        req.extend_from_slice(k);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body.as_bytes());
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn hostile_keys_are_400_and_reach_nothing() {
    let k = Kit::new();
    let p = k.proxy("eu-1", k.app_addr(), MEMORY).await;
    let alice = token(&p, "alice");
    let body = order_body("alice");
    let long = format!("\"{}\"", "k".repeat(10 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("empty string", b"\"\"".to_vec()),
        ("10 KiB", long.into_bytes()),
        ("tab inside", b"\"a\tb\"".to_vec()),
        ("control char", b"\"a\x01b\"".to_vec()),
        ("escape char", b"\"a\x1bb\"".to_vec()),
        ("DEL", b"\"a\x7fb\"".to_vec()),
        ("non-ASCII", "\"clé-ü\"".as_bytes().to_vec()),
        ("raw high bytes", b"\"\xff\xfe\"".to_vec()),
        ("unterminated", b"\"abc".to_vec()),
        ("parameters", b"\"abc\";x=1".to_vec()),
    ];
    let before = k.orders().await;
    for (name, key) in &cases {
        let (status, text) = raw_post(&p, &alice, Some(key), &body).await;
        assert_eq!(status, 400, "{name}: {text}");
    }
    // Sent twice: two keys for one request.
    let mut twice = format!(
        "POST /orders HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\n\
         Idempotency-Key: \"a\"\r\nIdempotency-Key: \"b\"\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        p.addr,
        body.len()
    );
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(twice.as_bytes()).await.unwrap();
    twice.clear();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "header twice: {text}");
    assert_eq!(k.orders().await, before, "no hostile key reached the app");
    // The proxy is still there and serves a good key.
    let (status, _) = raw_post(&p, &alice, Some(b"\"fine\""), &body).await;
    assert_eq!(status, 201);
    assert!(idem_metric(&metrics(&k, &p).await, "malformed_400") >= 8.0);
}

/// The TypeScript client (`clients/js/`) sends `Idempotency-Key:
/// "<uuid>"` (a quoted structured-field string); Stripe-style clients send
/// the bare token. Both name one key at the proxy.
#[tokio::test]
async fn quoted_and_bare_forms_of_a_key_are_one_key() {
    let k = Kit::new();
    let p = k.proxy("eu-1", k.app_addr(), MEMORY).await;
    let alice = token(&p, "alice");
    let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    let quoted = format!("\"{uuid}\"");
    let first = post(&k.http, &p, &alice, Some(&quoted), &order_body("alice")).await;
    assert_eq!(first.status, 201);
    let bare = post(&k.http, &p, &alice, Some(uuid), &order_body("alice")).await;
    assert_eq!(bare.replayed.as_deref(), Some("true"), "{bare:?}");
    assert_eq!(bare.body, first.body);
}
