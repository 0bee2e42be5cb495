//! The corpus classes of the edge probe (issue 11): what a client can send
//! over a raw socket that a lenient backend might read differently from
//! the proxy. Every case is the exact bytes sent; a recording upstream
//! keeps the exact bytes that reached the app, and each case asserts both
//! the answer and what (if anything) the app saw.
//!
//! Classes (one `#[test]` each in `tests/corpus.rs`):
//! - paths: dot-segments, encoded dots and separators, backslashes,
//!   `;` parameters, double encoding, absolute form (public-prefix escape);
//! - identity headers: `_` spellings of the proxy's own headers, on the
//!   token path, on public paths and in the login call;
//! - forwarding headers: client-sent `X-Forwarded-*`, `Forwarded`,
//!   `X-Real-IP`, path overrides, on all three paths;
//! - login subjects: ids the app answers with that a careless mapping
//!   would rewrite or make collide;
//! - token headers: `crit`, over-long lifetimes;
//! - framing: `Content-Length` with `Transfer-Encoding`, no `Host`,
//!   pipelining, list-valued `Content-Length`, stalled bodies;
//! - HTTP niceties: the bare `Bearer` challenge, a cacheable JWKS,
//!   discovery's 304 with its Cache-Control.

use std::net::SocketAddr;
use std::sync::Arc;

use tether_testkit::{Recorded, RecordingUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Sends `bytes` on a fresh connection and reads until the proxy closes
/// it or stays quiet for `quiet`; returns everything read.
async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Vec<u8> {
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    sock.write_all(bytes).await.expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status codes of every response in `raw`, in order.
fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    let mut found = Vec::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("HTTP/1.1 ") {
        let code = &rest[at + 9..(at + 12).min(rest.len())];
        if let Ok(c) = code.parse() {
            found.push(c);
        }
        rest = &rest[at + 9..];
    }
    found
}

/// Header names of a recorded request, as sent.
fn names(r: &Recorded) -> Vec<String> {
    r.head()
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// The folded form a CGI/WSGI backend reads a header name as.
fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

const QUIET: Duration = Duration::from_millis(700);

/// A cluster with one proxy in front of a recording upstream that answers
/// `/login` with `login_answer(body)` and everything else with 200.
async fn edge_cluster(
    login_answer: fn(&str) -> Vec<u8>,
    limits: &str,
) -> (Cluster, RecordingUpstream, Proxy, String) {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = RecordingUpstream::start_answering(Arc::new(move |r: &Recorded| {
        if r.target() == "/login" {
            let body = String::from_utf8_lossy(r.body()).into_owned();
            (200, "application/json", login_answer(&body))
        } else {
            (200, "text/plain", b"recorded\n".to_vec())
        }
    }))
    .await;
    let p = c
        .proxy("eu-1", "eu")
        .upstream_addr(app.addr)
        .limits(limits)
        .start()
        .await;
    let (access, _) = mint(&p.config, "alice", "eu-1", "eu");
    (c, app, p, access)
}

fn alice_login(_: &str) -> Vec<u8> {
    br#"{"userId":"alice"}"#.to_vec()
}

/// Waits until the app has seen `n` requests (other than health checks).
async fn app_saw(app: &RecordingUpstream, n: usize) -> Vec<Recorded> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = app.app_requests();
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ paths

/// Public-prefix escapes: every spelling of "up out of `/public/`" either
/// lands on the token check (401: the canonical path is not public) or is
/// refused (400); the app never sees a request for a protected path
/// without a token. Canonical paths that stay public are forwarded in
/// their canonical form.
pub(super) async fn paths() -> usize {
    let (_c, app, p, access) = edge_cluster(alice_login, "").await;
    let host = format!("Host: {}\r\n", p.addr);
    // (target, status, what the app must see: None = nothing)
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("/public/../secret".into(), 401, None),
        ("/public/%2e%2e/secret".into(), 401, None),
        ("/public/%2E%2E/secret".into(), 401, None),
        ("/public/%2e%2E/secret".into(), 401, None),
        ("/public/.%2e/secret".into(), 401, None),
        ("/public/%2e./secret".into(), 401, None),
        ("/public/./../secret".into(), 401, None),
        ("/public/x/../../secret".into(), 401, None),
        ("/public/../secret?x=1".into(), 401, None),
        ("/public/..".into(), 401, None),
        ("//public/../secret".into(), 401, None),
        ("/PUBLIC/x".into(), 401, None),
        ("/publ%69c/../secret".into(), 401, None),
        (format!("http://{}/public/../secret", p.addr), 401, None),
        ("/public/..%2fsecret".into(), 400, None),
        ("/public/..%2Fsecret".into(), 400, None),
        ("/public%2f..%2fsecret".into(), 400, None),
        ("/public/..%5csecret".into(), 400, None),
        ("/public/..%5Csecret".into(), 400, None),
        ("/public/..;/secret".into(), 400, None),
        ("/public/.;/secret".into(), 400, None),
        ("/public/..;jsessionid=1/secret".into(), 400, None),
        ("/public/%2e%2e;x/secret".into(), 400, None),
        ("/public/%252e%252e/secret".into(), 400, None),
        ("/public/..%252fsecret".into(), 400, None),
        ("/public/%25%32%65%25%32%65/secret".into(), 400, None),
        ("/public/%u002e%u002e/secret".into(), 400, None),
        ("/public/%00/x".into(), 400, None),
        ("/public/%0d%0aX-Injected:%201".into(), 400, None),
        ("/public/%zz".into(), 400, None),
        ("/../secret".into(), 400, None),
        ("/public/../../secret".into(), 400, None),
        ("/public\\..\\secret".into(), 400, None),
        // Canonical and still public: forwarded, canonical.
        ("/public/./a.css".into(), 200, Some("/public/a.css")),
        ("/public/%61.css".into(), 200, Some("/public/a.css")),
        ("/public/x/../a.css".into(), 200, Some("/public/a.css")),
        ("/public/a?x=/../y".into(), 200, Some("/public/a?x=/../y")),
        (
            format!("http://{}/public/b.css?q", p.addr),
            200,
            Some("/public/b.css?q"),
        ),
    ];
    let n = cases.len();
    for (target, want, seen) in &cases {
        app.clear();
        let req = format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
        assert_eq!(
            statuses(&raw).first().copied(),
            Some(*want),
            "[path {target:?}] answer: {}",
            String::from_utf8_lossy(&raw)
        );
        let got = app_saw(&app, usize::from(seen.is_some())).await;
        match seen {
            None => assert!(
                got.is_empty(),
                "[path {target:?}] reached the app: {:?}",
                got.iter().map(Recorded::target).collect::<Vec<_>>()
            ),
            Some(t) => {
                assert_eq!(got.len(), 1, "[path {target:?}] app requests");
                assert_eq!(got[0].target(), *t, "[path {target:?}] forwarded target");
            }
        }
    }
    // With a token, the app gets the canonical path too.
    app.clear();
    let req = format!(
        "GET /orders/../orders/1 HTTP/1.1\r\n{host}Authorization: Bearer {access}\r\nConnection: close\r\n\r\n"
    );
    let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
    assert_eq!(
        statuses(&raw).first(),
        Some(&200),
        "token path, dot-segments"
    );
    let got = app_saw(&app, 1).await;
    assert_eq!(got[0].target(), "/orders/1", "token path: canonical target");
    n + 1
}

// ------------------------------------------------------ identity headers

/// Spellings of the proxy's own headers that backends fold into the real
/// names: none reaches the app, on any path; the token path carries the
/// verified subject exactly once.
pub(super) async fn identity_headers() -> usize {
    let (_c, app, p, access) = edge_cluster(alice_login, "").await;
    let host = format!("Host: {}\r\n", p.addr);
    let spellings = [
        "X_Tether_Subject: admin",
        "X-Tether_Subject: admin",
        "x_tether-subject: admin",
        "X_TETHER_SUBJECT: admin",
        "X-TETHER-SUBJECT: admin",
        "X_Tether_Server: eu-9",
        "Tether_Access_Token: x",
        "X-Tether_Hop: forged",
        "X_Custom_Header: 1",
    ];
    let mut n = 0;
    for spelling in spellings {
        for (what, req) in [
            (
                "token path",
                format!("GET /orders HTTP/1.1\r\n{host}Authorization: Bearer {access}\r\n{spelling}\r\nConnection: close\r\n\r\n"),
            ),
            (
                "public path",
                format!("GET /public/x HTTP/1.1\r\n{host}{spelling}\r\nConnection: close\r\n\r\n"),
            ),
            (
                "login",
                format!("POST /auth/login HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 2\r\n{spelling}\r\nConnection: close\r\n\r\n{{}}"),
            ),
        ] {
            n += 1;
            app.clear();
            let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
            assert_eq!(statuses(&raw).first(), Some(&200), "[{what}, {spelling}] answer");
            let got = app_saw(&app, 1).await;
            assert_eq!(got.len(), 1, "[{what}, {spelling}] app requests");
            let seen = &got[0];
            for name in names(seen) {
                assert!(!name.contains('_'), "[{what}, {spelling}] reached the app: {name}");
            }
            let subjects = seen.header_values("x-tether-subject");
            let servers = seen.header_values("x-tether-server");
            if what == "token path" {
                assert_eq!(subjects, ["alice"], "[{what}, {spelling}] subject");
                assert_eq!(servers, ["eu-1"], "[{what}, {spelling}] server");
            } else {
                assert!(subjects.is_empty(), "[{what}, {spelling}] subject: {subjects:?}");
                assert!(servers.is_empty(), "[{what}, {spelling}] server: {servers:?}");
            }
            assert!(
                !names(seen).iter().any(|n| folded(n) == "x-tether-hop"),
                "[{what}, {spelling}] hop marker reached the app"
            );
        }
    }
    n
}

// ---------------------------------------------------- forwarding headers

/// Client-sent forwarding headers are replaced (or dropped) on every path,
/// the login call included: the app sees the proxy's view of the client.
pub(super) async fn forwarding_headers() -> usize {
    let (_c, app, p, access) = edge_cluster(alice_login, "").await;
    let host = format!("Host: {}\r\n", p.addr);
    let forged = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX_Forwarded_For: 6.6.6.6\r\n";
    let mut n = 0;
    for (what, req) in [
        (
            "login",
            format!("POST /auth/login HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 2\r\n{forged}Connection: close\r\n\r\n{{}}"),
        ),
        (
            "token path",
            format!("GET /orders HTTP/1.1\r\n{host}Authorization: Bearer {access}\r\n{forged}Connection: close\r\n\r\n"),
        ),
        (
            "public path",
            format!("GET /public/x HTTP/1.1\r\n{host}{forged}Connection: close\r\n\r\n"),
        ),
    ] {
        n += 1;
        app.clear();
        let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
        assert_eq!(statuses(&raw).first(), Some(&200), "[{what}] answer");
        let got = app_saw(&app, 1).await;
        assert_eq!(got.len(), 1, "[{what}] app requests");
        let seen = &got[0];
        assert_eq!(seen.header_values("x-forwarded-for"), ["127.0.0.1"], "[{what}] XFF");
        assert_eq!(
            seen.header_values("forwarded"),
            ["for=127.0.0.1;proto=http"],
            "[{what}] Forwarded"
        );
        assert_eq!(seen.header_values("x-forwarded-proto"), ["http"], "[{what}] XFP");
        for dropped in ["x-forwarded-host", "x-forwarded-port", "x-real-ip", "x-original-url", "x-rewrite-url"] {
            assert!(
                seen.header_values(dropped).is_empty(),
                "[{what}] {dropped} reached the app"
            );
        }
        for name in names(seen) {
            assert!(!name.contains('_'), "[{what}] reached the app: {name}");
        }
    }
    n
}

// -------------------------------------------------------- login subjects

fn login_by_case(body: &str) -> Vec<u8> {
    // The client's login body names the case: {"username":"<answer>"}.
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["username"].as_str().unwrap_or("{}").as_bytes().to_vec()
}

/// Ids the app answers with: taken exactly, or refused (502
/// `login_mapping_failed`, no tokens); never rewritten into another user.
pub(super) async fn login_subjects() -> usize {
    let (c, _app, p, _access) = edge_cluster(login_by_case, "").await;
    let cases: [(&str, Option<&str>); 12] = [
        (r#"{"userId":"admin"}"#, Some("admin")),
        (r#"{"userId":" admin "}"#, None),
        (r#"{"userId":"admin "}"#, None),
        (r#"{"userId":"\tadmin"}"#, None),
        (
            r#"{"userId":18446744073709551616}"#,
            Some("18446744073709551616"),
        ),
        (
            r#"{"userId":18446744073709551617}"#,
            Some("18446744073709551617"),
        ),
        (r#"{"userId":42}"#, Some("42")),
        (r#"{"userId":1e2}"#, None),
        (r#"{"userId":100.0}"#, None),
        (r#"{"userId":true}"#, None),
        (r#"{"userId":["admin"]}"#, None),
        (r#"{"userId":"ad\u0000min"}"#, None),
    ];
    for (answer, subject) in cases {
        let r = c
            .http
            .post(format!("{}/auth/login", p.url))
            .json(&json!({ "username": answer }))
            .send()
            .await
            .expect("login");
        let status = r.status().as_u16();
        let token = r
            .headers()
            .get("tether-access-token")
            .map(|v| v.to_str().expect("ascii").to_owned());
        match subject {
            Some(want) => {
                assert_eq!(status, 200, "[login answer {answer}]");
                let token = token.expect("a token");
                let payload = token.split('.').nth(1).expect("payload");
                let claims: Value =
                    serde_json::from_slice(&B64.decode(payload).expect("b64")).expect("claims");
                assert_eq!(claims["sub"], want, "[login answer {answer}] subject");
            }
            None => {
                assert_eq!(status, 502, "[login answer {answer}]");
                assert!(token.is_none(), "[login answer {answer}] minted a token");
            }
        }
    }
    cases.len()
}

// ---------------------------------------------------------- token headers

/// Validly signed tokens that must still be refused: a `crit` header
/// (RFC 7515 §4.1.11) and a lifetime over the configured one.
pub(super) async fn token_headers() -> usize {
    let (c, app, p, _access) = edge_cluster(alice_login, "").await;
    let f = Forge {
        key: EncodingKey::from_secret(&ring_secret(&c)),
        now: tether_proxy::tokens::unix_now(),
    };
    let now = f.now;
    // The builder's access TTL is 120 s and the leeway 2 s.
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "crit [foo]",
            f.sign(
                &f.header(|h| h["crit"] = json!(["foo"])),
                &f.access_claims(|_| {}),
            ),
            401,
        ),
        (
            "crit []",
            f.sign(
                &f.header(|h| h["crit"] = json!([])),
                &f.access_claims(|_| {}),
            ),
            401,
        ),
        (
            "crit [exp]",
            f.sign(
                &f.header(|h| h["crit"] = json!(["exp"])),
                &f.access_claims(|_| {}),
            ),
            401,
        ),
        (
            "crit null",
            f.sign(
                &f.header(|h| h["crit"] = Value::Null),
                &f.access_claims(|_| {}),
            ),
            401,
        ),
        (
            "lifetime ttl + leeway + 1",
            f.access(|v| v["exp"] = (now + 123).into()),
            401,
        ),
        (
            "lifetime one year",
            f.access(|v| v["exp"] = (now + 365 * 86_400).into()),
            401,
        ),
        (
            "iat long ago",
            f.access(|v| v["iat"] = (now - 86_400).into()),
            401,
        ),
        (
            "lifetime ttl + leeway",
            f.access(|v| v["exp"] = (now + 122).into()),
            200,
        ),
    ];
    for (name, token, want) in &cases {
        app.clear();
        let r = get(&c.http, &format!("{}/orders", p.url), Some(token)).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, *want, "[token {name}] {body}");
        if *want == 401 {
            assert!(
                app_saw(&app, 1).await.is_empty(),
                "[token {name}] reached the app"
            );
        }
    }
    cases.len()
}

// ----------------------------------------------------------------- framing

/// Framing an edge must not pass on ambiguously.
pub(super) async fn framing() -> usize {
    let (_c, app, p, _access) = edge_cluster(alice_login, "body_read_timeout_ms = 1000").await;
    let host = format!("Host: {}\r\n", p.addr);
    let mut n = 0;
    // Content-Length with Transfer-Encoding, in several spellings: 400,
    // connection closed, nothing at the app.
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "CONTENT-LENGTH: 0\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n",
        "content-length: 5\r\ntransfer-encoding: CHUNKED\r\n",
    ] {
        n += 1;
        app.clear();
        let req = format!("POST /public/x HTTP/1.1\r\n{host}{head}\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\n{host}\r\n");
        let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
        assert_eq!(
            statuses(&raw),
            [400],
            "[CL+TE {head:?}] {}",
            String::from_utf8_lossy(&raw)
        );
        assert!(
            app_saw(&app, 1).await.is_empty(),
            "[CL+TE {head:?}] reached the app"
        );
    }
    // HTTP/1.1 without Host: 400; HTTP/1.0 without Host: served.
    n += 2;
    app.clear();
    let raw = exchange(
        p.addr,
        b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        QUIET,
    )
    .await;
    assert_eq!(statuses(&raw), [400], "[no Host, 1.1]");
    assert!(
        app_saw(&app, 1).await.is_empty(),
        "[no Host, 1.1] reached the app"
    );
    let raw = exchange(p.addr, b"GET /public/x HTTP/1.0\r\n\r\n", QUIET).await;
    assert_eq!(statuses(&raw).first(), Some(&200), "[no Host, 1.0]");
    // Pipelined requests: every one answered, in order.
    for count in [2usize, 3, 5] {
        n += 1;
        app.clear();
        let mut req = String::new();
        for i in 0..count {
            req.push_str(&format!("GET /public/p{i} HTTP/1.1\r\n{host}\r\n"));
        }
        let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
        assert_eq!(statuses(&raw), vec![200; count], "[pipelined {count}]");
        let got = app_saw(&app, count).await;
        let targets: Vec<_> = got.iter().map(Recorded::target).collect();
        let want: Vec<_> = (0..count).map(|i| format!("/public/p{i}")).collect();
        assert_eq!(targets, want, "[pipelined {count}] order at the app");
    }
    // List-valued Content-Length: one value reaches the app; differing
    // values are refused.
    for (head, ok) in [
        ("Content-Length: 5, 5\r\n", true),
        ("Content-Length: 5\r\nContent-Length: 5\r\n", true),
        ("Content-Length: 5,5\r\n", true),
        ("Content-Length: 5, 6\r\n", false),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", false),
    ] {
        n += 1;
        app.clear();
        let req = format!("POST /public/x HTTP/1.1\r\n{host}{head}Connection: close\r\n\r\nhello");
        let raw = exchange(p.addr, req.as_bytes(), QUIET).await;
        let got = app_saw(&app, usize::from(ok)).await;
        if ok {
            assert_eq!(statuses(&raw), [200], "[{head:?}]");
            assert_eq!(got.len(), 1, "[{head:?}] app requests");
            assert_eq!(got[0].header_values("content-length"), ["5"], "[{head:?}]");
            assert_eq!(got[0].body(), b"hello", "[{head:?}] body");
        } else {
            assert_eq!(statuses(&raw), [400], "[{head:?}]");
            assert!(got.is_empty(), "[{head:?}] reached the app");
        }
    }
    // A stalled body: 408 (never a 5xx), on a reserved endpoint and on a
    // proxied request.
    for target in ["/auth/refresh", "/public/upload"] {
        n += 1;
        let req = format!("POST {target} HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"refre");
        let raw = exchange(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(
            statuses(&raw),
            [408],
            "[stalled body {target}] {}",
            String::from_utf8_lossy(&raw)
        );
    }
    n
}

// ------------------------------------------------------------- niceties

/// The bare `Bearer` challenge without credentials (RFC 6750 §3.1), and a
/// JWKS a verifier can cache.
pub(super) async fn niceties() -> usize {
    let (c, _app, p, _access) = edge_cluster(alice_login, "").await;
    let r = c
        .http
        .get(format!("{}/orders", p.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer", "no credentials");
    let r = get(&c.http, &format!("{}/orders", p.url), Some("x.y.z")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "bad credentials"
    );
    let r = c
        .http
        .get(format!("{}/orders", p.url))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer", "another scheme");

    let jwks = format!("{}/.well-known/jwks.json", p.url);
    let r = c.http.get(&jwks).send().await.expect("jwks");
    assert_eq!(r.status(), 200);
    let cache = r.headers()["cache-control"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cache.contains("max-age="), "JWKS cache-control: {cache}");
    let etag = r.headers()["etag"].to_str().expect("ascii").to_owned();
    let r = c
        .http
        .get(&jwks)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("jwks");
    assert_eq!(r.status(), 304, "JWKS revalidation");
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = c
        .http
        .get(&jwks)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .expect("jwks");
    assert_eq!(r.status(), 200, "JWKS with a stale tag");

    // Discovery's 304 carries the Cache-Control of its 200.
    let servers = format!("{}/v1/servers", c.discovery_url());
    let r = c.http.get(&servers).send().await.expect("servers");
    assert_eq!(r.status(), 200);
    let cache = r.headers()["cache-control"].clone();
    let etag = r.headers()["etag"].clone();
    let r = c
        .http
        .get(&servers)
        .header("if-none-match", etag)
        .send()
        .await
        .expect("servers");
    assert_eq!(r.status(), 304, "discovery revalidation");
    assert_eq!(
        r.headers().get("cache-control"),
        Some(&cache),
        "discovery 304 Cache-Control"
    );
    6
}
