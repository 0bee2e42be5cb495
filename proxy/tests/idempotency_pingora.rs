//! The idempotency module wired into a real Pingora proxy exactly as
//! `proxy/src/idempotency/mod.rs` tells the service to, in front of a
//! small counting upstream: checks the phase calls themselves (request
//! body seen to its end, upstream filters, client hang-up) with real
//! sockets on 127.0.0.1.
//!
//! One proxy and one upstream serve every test of this file; each test
//! uses its own paths and keys.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use tether_proxy::idempotency::{config, Idempotency, Step, Tracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Proxy {
    idem: Arc<Idempotency>,
    upstream: SocketAddr,
}

struct Ctx {
    idem: Option<Box<Tracker>>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { idem: None }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<bool> {
        // Stands in for the verified token's subject.
        let subject = session
            .req_header()
            .headers
            .get("x-test-subject")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_else(|| b"anonymous".to_vec());
        match self
            .idem
            .request_filter(session, &subject, Duration::from_secs(5))
            .await?
        {
            Step::Answered => Ok(true),
            Step::Forward(t) => {
                ctx.idem = t;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _c: &mut Ctx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _upstream: &mut pingora_http::RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<()> {
        if let Some(t) = ctx.idem.as_mut() {
            t.upstream_request();
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<()> {
        if let Some(t) = ctx.idem.as_mut() {
            t.request_body(body.as_ref(), end_of_stream);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<()> {
        if let Some(t) = ctx.idem.as_mut() {
            t.response_header(upstream_response);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora_core::Result<Option<Duration>> {
        if let Some(t) = ctx.idem.as_mut() {
            t.response_body(body.as_ref(), end_of_stream);
        }
        Ok(None)
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _e: Option<&pingora_core::Error>,
        ctx: &mut Ctx,
    ) {
        if let Some(t) = ctx.idem.take() {
            t.finish().await;
        }
    }
}

/// Requests the upstream received, by path.
type Counts = Arc<Mutex<HashMap<String, u32>>>;

struct Kit {
    proxy: SocketAddr,
    counts: Counts,
}

fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
}

/// The shared proxy and upstream, started once.
fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(|| {
        let counts: Counts = Arc::default();
        let upstream = start_upstream(counts.clone());
        let proxy = free_port();
        let cfg = config::parse_table(
            "enabled = true\nrequired_prefixes = [\"/orders\"]\nmax_stored_response_bytes = 1024",
        )
        .expect("table");
        let idem = Idempotency::new(cfg, &prometheus::Registry::new()).expect("engine");
        std::thread::spawn(move || {
            let conf = ServerConf {
                threads: 1,
                work_stealing: false,
                grace_period_seconds: Some(0),
                graceful_shutdown_timeout_seconds: Some(0),
                ..ServerConf::default()
            };
            let mut server = Server::new_with_opt_and_conf(None, conf);
            server.bootstrap();
            let mut svc =
                pingora_proxy::http_proxy_service(&server.configuration, Proxy { idem, upstream });
            svc.add_tcp(&proxy.to_string());
            server.add_service(svc);
            server.run_forever()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(proxy).is_err() {
            assert!(Instant::now() < deadline, "the proxy did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Kit { proxy, counts }
    })
}

/// A one-request-per-connection HTTP/1.1 upstream. Query `status=N` sets
/// the status, `delay=MS` delays the answer, `big` makes the body 2 KiB.
/// The body names the path, how many requests that path has seen, and the
/// request body's length.
fn start_upstream(counts: Counts) -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("upstream bind");
    let addr = listener.local_addr().expect("upstream addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let n = {
                        let mut c = counts.lock().unwrap();
                        let n = c.entry(path.to_owned()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let mut status = 201;
                    let mut big = false;
                    for kv in query.split('&') {
                        match kv.split_once('=') {
                            Some(("status", v)) => status = v.parse().unwrap_or(201),
                            Some(("delay", v)) => {
                                tokio::time::sleep(Duration::from_millis(v.parse().unwrap_or(0)))
                                    .await
                            }
                            _ if kv == "big" => big = true,
                            _ => {}
                        }
                    }
                    let mut body = format!("{{\"path\":\"{path}\",\"n\":{n},\"len\":{len}}}");
                    if big {
                        body.push_str(&" ".repeat(2048));
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nlocation: {path}/{n}\r\nset-cookie: sid={n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
    });
    addr
}

fn count(path: &str) -> u32 {
    kit().counts.lock().unwrap().get(path).copied().unwrap_or(0)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn post(path: &str, key: Option<&str>, body: &'static str) -> reqwest::Response {
    let mut req = client()
        .post(format!("http://{}{path}", kit().proxy))
        .header("x-test-subject", "alice")
        .body(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_retried_five_times_reaches_the_app_once() {
    let first = post("/orders/five", Some("\"five\""), "{\"item\":1}").await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let body = first.bytes().await.unwrap();
    for _ in 0..5 {
        let again = post("/orders/five", Some("five"), "{\"item\":1}").await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["location"], location);
        assert!(again.headers().get("set-cookie").is_none());
        assert_eq!(again.bytes().await.unwrap(), body, "byte for byte");
    }
    assert_eq!(count("/orders/five"), 1);

    // Another body with that key: 422; another user: its own request.
    let other = post("/orders/five", Some("five"), "{\"item\":2}").await;
    assert_eq!(other.status(), 422);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    let bob = client()
        .post(format!("http://{}/orders/five", kit().proxy))
        .header("x-test-subject", "bob")
        .header("idempotency-key", "five")
        .body("{\"item\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 201);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    assert_eq!(count("/orders/five"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_requests_with_one_key_reach_the_app_once() {
    let (a, b) = tokio::join!(post("/orders/race?delay=400", Some("race"), "x"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post("/orders/race?delay=400", Some("race"), "x").await
    });
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
    assert_eq!(count("/orders/race"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_hostile_keys_are_400() {
    let r = post("/orders/nokey", None, "x").await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "urn:tether:problem:idempotency-key-missing");
    for hostile in ["\"\"", &"k".repeat(10 * 1024), "\"a\tb\"", "a b"] {
        let r = post("/orders/hostile", Some(hostile), "x").await;
        assert_eq!(r.status(), 400, "{hostile:.20}");
    }
    // Non-ASCII bytes through a raw header value.
    let r = client()
        .post(format!("http://{}/orders/hostile", kit().proxy))
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes("\"caf\u{e9}\"".as_bytes()).unwrap(),
        )
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(count("/orders/nokey") + count("/orders/hostile"), 0);
    // Outside required_prefixes, no key is fine.
    assert_eq!(post("/free", None, "x").await.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstored_answers_let_the_retry_through() {
    for (path, query) in [("/orders/e500", "?status=500"), ("/orders/big", "?big")] {
        let url = format!("{path}{query}");
        let key = path.trim_start_matches("/orders/");
        let first = post(&url, Some(key), "x").await;
        let _ = first.bytes().await;
        let second = post(&url, Some(key), "x").await;
        assert!(second.headers().get("idempotent-replayed").is_none());
        assert_eq!(count(path), 2, "{path}: the retry reached the app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_still_gets_the_answer_on_retry() {
    // Send the request, then close our write half before the (delayed)
    // answer: the proxy keeps the exchange with the app and stores it.
    let mut s = tokio::net::TcpStream::connect(kit().proxy).await.unwrap();
    s.write_all(
        b"POST /orders/hangup?delay=300 HTTP/1.1\r\nhost: x\r\nx-test-subject: alice\r\n\
          idempotency-key: hangup\r\ncontent-length: 1\r\n\r\nx",
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count("/orders/hangup") == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retry until the first answer is stored (409 while in flight).
    loop {
        let r = post("/orders/hangup?delay=300", Some("hangup"), "x").await;
        match r.status().as_u16() {
            409 => {
                assert!(Instant::now() < deadline, "still in flight");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            201 => {
                assert_eq!(r.headers()["idempotent-replayed"], "true");
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(count("/orders/hangup"), 1);
}
