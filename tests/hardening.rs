//! Connection-level hardening of the client listener, on real processes
//! and loopback sockets: TLS (rustls), the request-head deadline against
//! slowloris, and the connection caps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pingora_core::tls as rustls;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TLS connection to 127.0.0.1:`port` that trusts only `ca`.
async fn tls_connect(port: u16, ca: &Path) -> std::io::Result<rustls::ClientTlsStream<TcpStream>> {
    rustls::install_default_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    rustls::load_ca_file_into_store(ca, &mut roots).expect("load the test CA");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::ServerName::try_from("localhost").expect("server name");
    rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One request with `Connection: close`; returns the status, the head
/// and the body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify is an error at EOF;
    // what was read before it counts.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A header's value from a response head (names compared without case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

/// Reads until the server closes the connection; true if it did within
/// `within`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_client_listener() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let TlsSet { ca, cert, key } = c.tls_set("tls");
    let app = Upstream::start("app").await;
    let peer_ca = format!("peer_ca_file = {ca:?}\n"); // also checks the key parses
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .tls(&cert, &key)
        .routing_extra(&peer_ca)
        .limits("header_read_timeout_ms = 1500")
        .start()
        .await;
    assert!(a.url.starts_with("https://"), "{}", a.url);
    let port = a.addr.port();

    // Login over TLS: tokens in the answer's headers, locked to eu-1 at
    // its https:// public URL.
    let mut s = tls_connect(port, &ca).await.expect("TLS handshake");
    let (status, head, body) = exchange(
        &mut s,
        "POST",
        "/auth/login",
        &[("content-type", "application/json")],
        r#"{"username":"alice","password":"pw"}"#,
    )
    .await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(header(&head, "tether-server-id"), Some("eu-1"));
    assert_eq!(header(&head, "tether-server-url"), Some(a.url.as_str()));
    let access = header(&head, "tether-access-token")
        .expect("access token")
        .to_owned();

    // A proxied request over TLS: the upstream learns the client came in
    // over https.
    let before = app.requests();
    let mut s = tls_connect(port, &ca).await.expect("TLS handshake");
    let auth = format!("Bearer {access}");
    let (status, head, _) =
        exchange(&mut s, "GET", "/orders", &[("authorization", &auth)], "").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(app.requests(), before + 1);
    let seen = app.last().expect("the upstream saw the request");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["forwarded"], "for=127.0.0.1;proto=https");

    // Plain HTTP on the TLS port: no HTTP answer, nothing forwarded.
    let mut plain = TcpStream::connect(a.addr).await.unwrap();
    let (status, _, _) = exchange(
        &mut plain,
        "GET",
        "/orders",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_ne!(status, 200);
    assert_eq!(app.requests(), before + 1, "plain HTTP was not forwarded");

    // A client that trusts another CA refuses the server's certificate.
    let other = c.tls_set("other-tls");
    assert!(tls_connect(port, &other.ca).await.is_err());

    // The head deadline holds over TLS too: a partial head is cut off.
    let mut slow = tls_connect(port, &ca).await.expect("TLS handshake");
    slow.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(6)).await);
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}, before the 1.5 s deadline",
        t.elapsed()
    );

    // The proxy is still healthy.
    let mut s = tls_connect(port, &ca).await.expect("TLS handshake");
    let (status, _, _) = exchange(&mut s, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
}

/// The fast-failover probe of an `https://` peer: a client that reports an
/// HTTPS server unreachable stays on it while its `/healthz` answers over
/// TLS (checked against `routing.peer_ca_file`), and moves at once when it
/// is gone. A proxy that does not trust the peer's CA cannot confirm it
/// alive, so the client's report stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_peers_are_probed_over_tls() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let TlsSet { ca, cert, key } = c.tls_set("tls");
    let (app_a, app_b, app_c) = (
        Upstream::start("app-a").await,
        Upstream::start("app-b").await,
        Upstream::start("app-c").await,
    );
    let mut a = c
        .proxy("eu-1", "eu")
        .upstream(&app_a)
        .tls(&cert, &key)
        .start()
        .await;
    let trusting = c
        .proxy("us-1", "us")
        .upstream(&app_b)
        .routing_extra(&format!("peer_ca_file = {ca:?}\n"))
        .start()
        .await;
    let untrusting = c.proxy("us-2", "us").upstream(&app_c).start().await;
    trusting.wait_sees(&c.http, &["eu-1", "us-1", "us-2"]).await;
    untrusting
        .wait_sees(&c.http, &["eu-1", "us-1", "us-2"])
        .await;

    // A client of eu-1, at `at`, reports eu-1 unreachable.
    let report = |at: &Proxy, user: &str| {
        let (config, url, http) = (at.config.clone(), at.url.clone(), c.http.clone());
        let user = user.to_owned();
        async move {
            let (_, rt) = mint(&config, &user, "eu-1", "eu");
            let body = json!({"refreshToken": rt, "closestServerId": "eu-1", "unreachableServerId": "eu-1"});
            let (s, v) = refresh(&http, &url, body).await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };

    // Alive over TLS: the report is not believed, the client stays.
    let v = report(&trusting, "alice").await;
    assert_eq!(
        (v["server"]["id"].as_str(), v["serverChanged"].as_bool()),
        (Some("eu-1"), Some(false)),
        "{v}"
    );
    assert_eq!(v["server"]["url"].as_str(), Some(a.url.as_str()));

    // Without the peer CA the TLS handshake fails: eu-1 is not confirmed
    // alive and the client moves.
    let v = report(&untrusting, "bob").await;
    assert_eq!(
        (v["serverChanged"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("server_down")),
        "{v}"
    );

    // Killed: the next probe (after the cache second) finds it gone.
    a.proc.kill();
    tokio::time::sleep(tether_proxy::probe::PROBE_CACHE + Duration::from_millis(100)).await;
    let v = report(&trusting, "carol").await;
    assert_eq!(
        (v["serverChanged"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("server_down")),
        "{v}"
    );
    assert_ne!(v["server"]["id"], "eu-1", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_config_errors_name_the_key() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let dir = c.tls_set("tls");
    let other = c.tls_set("other");
    std::fs::write(c.path("garbage.pem"), "not a certificate\n").unwrap();
    let app_addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases: [(&str, String, &str); 5] = [
        (
            "cert without key",
            format!("tls_cert_file = {:?}\n", dir.cert),
            "server.tls_key_file",
        ),
        (
            "key without cert",
            format!("tls_key_file = {:?}\n", dir.key),
            "server.tls_cert_file",
        ),
        (
            "a key from another pair",
            format!(
                "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                dir.cert, other.key
            ),
            "server.tls_key_file",
        ),
        (
            "not a certificate",
            format!(
                "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                c.path("garbage.pem"),
                dir.key
            ),
            "server.tls_cert_file",
        ),
        (
            "missing file",
            format!(
                "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                dir.ca.with_file_name("nope.pem"),
                dir.key
            ),
            "server.tls_cert_file",
        ),
    ];
    for (name, server_extra, key) in cases {
        let path = c
            .proxy("eu-1", "eu")
            .upstream_addr(app_addr)
            .write_config(free_port(), free_port());
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen(
            "worker_threads = 1\n",
            &format!("worker_threads = 1\n{server_extra}"),
            1,
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(TETHER)
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "[{name}] accepted");
        assert!(
            err.contains(key),
            "[{name}] error does not name {key}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_at_the_head_deadline() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .limits("header_read_timeout_ms = 1500")
        .start()
        .await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let before = app.requests();

    // 500 connections, each dripping its request head a byte a second.
    // Each reports how long the server let it live.
    let mut drips = Vec::new();
    for _ in 0..500 {
        let addr = a.addr;
        drips.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            let t = Instant::now();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n").await.ok()?;
            let mut buf = [0u8; 256];
            for _ in 0..8 {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Some(t.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if s.write_all(b"X").await.is_err() {
                            return Some(t.elapsed());
                        }
                    }
                }
            }
            None // still open after 8 s
        }));
    }
    // Meanwhile a normal client is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let r = get(&c.http, &format!("{}/x", a.url), Some(&l.access)).await;
        assert_eq!(r.status(), 200, "a normal client is served during the drip");
        ok += 1;
    }
    assert!(ok >= 10, "only {ok} requests in 2 s");
    let mut lived = Vec::new();
    for d in drips {
        lived.push(d.await.unwrap());
    }
    let still_open = lived.iter().filter(|l| l.is_none()).count();
    assert_eq!(still_open, 0, "dripping connections outlived the deadline");
    let mut lived: Vec<Duration> = lived.into_iter().flatten().collect();
    lived.sort();
    assert!(
        lived[0] >= Duration::from_millis(1000),
        "a dripping connection was closed after {:?}, before its deadline",
        lived[0]
    );
    assert!(
        lived[lived.len() - 1] <= Duration::from_secs(6),
        "the slowest close took {:?}",
        lived[lived.len() - 1]
    );
    assert_eq!(
        app.requests(),
        before + ok,
        "no dripped request reached the app"
    );
    let m = a.metrics(&c.http).await;
    assert!(
        metric(&m, "tether_proxy_header_timeouts_total").unwrap() >= 500.0,
        "{m}"
    );

    // A slow but honest client (its head in three pieces within the
    // deadline) is served, and idle time between keep-alive requests does
    // not count against the next head.
    let mut s = TcpStream::connect(a.addr).await.unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", l.access);
    for piece in ["GET /slow HTTP/1.1\r\n", "Host: x\r\n", &auth, "\r\n"] {
        s.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.write_all(format!("GET /again HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}

/// Reads one response with a Content-Length body off a keep-alive
/// connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = header(head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// A connection from a chosen loopback source address.
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_in_total_and_per_ip() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .limits("max_connections = 6\nmax_connections_per_ip = 3\nheader_read_timeout_ms = 30000")
        .start()
        .await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let auth = format!("Bearer {}", l.access);
    // Every step waits for the exact count of open client connections, so
    // a slot still being released (a closed connection's task ends just
    // after its socket closes) never leaks into the next step. The kit's
    // HTTP client keeps no idle connections, and /metrics is on the admin
    // listener, which is not capped.
    let open_is = |n: usize| {
        let (http, a) = (&c.http, &a);
        async move {
            eventually(
                Duration::from_secs(10),
                &format!("{n} client connections open"),
                || async move {
                    let m = a.metrics(http).await;
                    metric(&m, "tether_proxy_connections_open") == Some(n as f64)
                },
            )
            .await
        }
    };
    open_is(0).await;

    // Three idle connections from 127.0.0.2 fill its per-IP share; a
    // fourth from there is refused with a JSON 503.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect_from("127.0.0.2", a.addr).await);
    }
    open_is(3).await;
    let mut s = connect_from("127.0.0.2", a.addr).await;
    let (status, head, body) = exchange(&mut s, "GET", "/x", &[("authorization", &auth)], "").await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("\"too_many_connections\""), "{body}");
    assert_eq!(header(&head, "retry-after"), Some("1"));
    drop(s);

    // Another address is still served (and its connection closes after).
    let mut s = connect_from("127.0.0.3", a.addr).await;
    let (status, _, _) = exchange(&mut s, "GET", "/x", &[("authorization", &auth)], "").await;
    assert_eq!(status, 200);
    drop(s);
    open_is(3).await;

    // Fill the total: now everyone is refused, whatever the address.
    for i in 0..3 {
        idle.push(connect_from(&format!("127.0.0.{}", 10 + i), a.addr).await);
    }
    open_is(6).await;
    let mut s = connect_from("127.0.0.4", a.addr).await;
    let (status, _, body) = exchange(&mut s, "GET", "/x", &[("authorization", &auth)], "").await;
    assert_eq!(status, 503, "{body}");
    drop(s);
    let requests = app.requests();

    // Closing the idle connections frees their slots.
    drop(idle);
    open_is(0).await;
    let mut s = connect_from("127.0.0.2", a.addr).await;
    let (status, _, _) = exchange(&mut s, "GET", "/x", &[("authorization", &auth)], "").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.requests(),
        requests + 1,
        "refused requests were not forwarded"
    );

    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(
            &m,
            "tether_proxy_connections_refused_total{limit=\"max_connections_per_ip\""
        )
        .unwrap(),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tether_proxy_connections_refused_total{limit=\"max_connections\""
        )
        .unwrap(),
        1.0,
        "{m}"
    );
}
