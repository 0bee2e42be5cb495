//! HTTP/2 on the client listener: TLS with ALPN `h2`, on real processes
//! and loopback sockets. Every test here speaks h2 to the proxy (the h2
//! crate as the client, or frames written by hand where a library would
//! refuse to send what the test sends) and asserts on what the upstream
//! received: the request path (path checks, token and lock, header
//! stripping, limits) is the same code for HTTP/1.1 and HTTP/2, and these
//! tests hold it to that.
//!
//! The edge corpus (`tests/corpus/edge.rs`) sends exact HTTP/1.1 bytes;
//! its request-path classes run here again over h2: paths
//! ([`paths_over_h2`]), identity and forwarding headers
//! ([`internal_and_forwarding_headers_are_stripped_over_h2`]), stalled
//! bodies ([`limits_over_h2`]). Its framing class (`Content-Length` with
//! `Transfer-Encoding`, no `Host`, pipelining, list-valued lengths) is
//! HTTP/1.1 by nature: h2 frames carry the lengths, and its counterparts
//! are the malformed requests of
//! [`malformed_h2_requests_are_refused_not_5xx`]. The login-subject, token
//! and niceties classes test what the app answers or what a token holds,
//! the same bytes whatever the client protocol.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use pingora_core::tls as rustls;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------- TLS set-up

type Tls = rustls::ClientTlsStream<TcpStream>;

/// A TLS connection to 127.0.0.1:`port` trusting only `ca`, offering
/// `alpn` (in order; empty: no ALPN extension).
async fn tls(port: u16, ca: &Path, alpn: &[&[u8]]) -> Tls {
    rustls::install_default_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    rustls::load_ca_file_into_store(ca, &mut roots).expect("load the test CA");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::ServerName::try_from("localhost").expect("server name");
    rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// The protocol the server picked by ALPN.
fn alpn_of(s: &Tls) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

// ------------------------------------------------- an h2 client (h2 crate)

/// An HTTP/2 connection (ALPN `h2`, checked) to a proxy.
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// One answer over h2.
#[derive(Debug)]
struct Answer {
    status: u16,
    version: http::Version,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

async fn h2_connect(port: u16, ca: &Path) -> H2Conn {
    let s = tls(port, ca, &[H2, H1]).await;
    assert_eq!(alpn_of(&s).as_deref(), Some(H2), "the proxy offers h2");
    let (send, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    H2Conn {
        send,
        authority: format!("localhost:{port}"),
    }
}

impl H2Conn {
    /// Sends a request (`body` empty: none) and reads the whole answer;
    /// `Err` is a stream or connection error (a reset).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, h2::Error> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).expect("request");
        let mut send = self.send.clone().ready().await?;
        let (resp, mut stream) = send.send_request(req, body.is_empty())?;
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body), true)?;
        }
        let resp = tokio::time::timeout(Duration::from_secs(15), resp)
            .await
            .expect("an answer within 15 s")?;
        let (parts, mut recv) = resp.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    async fn get(&mut self, path: &str, token: Option<&str>) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        self.send("GET", path, &headers, b"")
            .await
            .unwrap_or_else(|e| panic!("GET {path} over h2: {e}"))
    }
}

// ------------------------------------ raw h2 frames (what h2 libraries refuse)

/// How the proxy answered one hand-written request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// A response head with this status.
    Status(u16),
    /// The stream was reset (`RST_STREAM`, this error code).
    Reset(u32),
    /// The connection was closed (`GOAWAY`, this error code).
    GoAway(u32),
    /// The connection ended without either.
    Closed,
}

impl Raw {
    /// A refusal: a 4xx, or the stream or connection refused by the h2
    /// layer (RFC 9113 §8.1.1: a malformed request is a stream error).
    fn refused(self) -> bool {
        match self {
            Raw::Status(s) => (400..500).contains(&s),
            Raw::Reset(_) | Raw::GoAway(_) => true,
            Raw::Closed => false,
        }
    }
}

/// An HPACK integer with an `n`-bit prefix, `flags` in the first byte.
fn hpack_int(out: &mut Vec<u8>, n: u8, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields, new names, never indexed, no
/// Huffman coding: the bytes go to the server exactly as given.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x10);
        hpack_int(&mut b, 7, 0, name.len());
        b.extend_from_slice(name.as_bytes());
        hpack_int(&mut b, 7, 0, value.len());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Decodes HPACK Huffman codes for digits only (a status).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i + 5 <= bits.len() {
        let v = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
        if v <= 2 {
            out.push(char::from(b'0' + v));
            i += 5;
        } else if (0b01100..=0b01111).contains(&v) && i + 6 <= bits.len() {
            let v6 = v << 1 | bits[i + 5];
            if !(0x19..=0x1f).contains(&v6) {
                return None;
            }
            out.push(char::from(b'3' + (v6 - 0x19)));
            i += 6;
        } else {
            break;
        }
    }
    // What is left must be EOS padding (all ones, under 8 bits).
    (bits.len() - i < 8 && bits[i..].iter().all(|&b| b == 1)).then_some(out)
}

/// The `:status` of a response header block from a fresh connection
/// (static table or a literal with the `:status` name).
fn status_of(block: &[u8]) -> Option<u16> {
    let b = *block.first()?;
    if b & 0x80 != 0 {
        return match b & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    let name_index = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = usize::from(len_byte & 0x7f);
    let value = block.get(2..2 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// One request on a fresh h2 connection (ALPN `h2`), its header fields
/// written by hand, and optionally a body (sent in one DATA frame that
/// ends the stream; `stall`: the stream is left open after it).
async fn raw_h2(port: u16, ca: &Path, fields: &[(&str, &str)], body: &[u8], stall: bool) -> Raw {
    let mut s = tls(port, ca, &[H2]).await;
    assert_eq!(alpn_of(&s).as_deref(), Some(H2));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let end_stream = body.is_empty() && !stall;
    // A block over the default SETTINGS_MAX_FRAME_SIZE (16 KiB) goes as
    // HEADERS and CONTINUATION frames; END_HEADERS on the last.
    let block = header_block(fields);
    let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() { 0x4 } else { 0 };
        if i == 0 {
            let end = if end_stream { 0x1 } else { 0 };
            out.extend(frame(0x1, last | end, 1, piece));
        } else {
            out.extend(frame(0x9, last, 1, piece));
        }
    }
    if !body.is_empty() {
        out.extend(frame(0x0, if stall { 0 } else { 0x1 }, 1, body));
    }
    // A server that refuses the request early (a header block over its
    // bound) may close while the rest is still being sent: what it wrote
    // before closing is still read below.
    if s.write_all(&out).await.is_ok() {
        let _ = s.flush().await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Whole frames read so far.
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let flags = buf[4];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match (kind, stream) {
                (0x1, 1) => {
                    return Raw::Status(status_of(&payload).expect("a :status I can decode"))
                }
                (0x3, 1) => {
                    return Raw::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()))
                }
                (0x7, _) => {
                    return Raw::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
                }
                // Acknowledge the server's SETTINGS.
                (0x4, 0) if flags & 0x1 == 0 => {
                    let _ = s.write_all(&frame(0x4, 0x1, 0, &[])).await;
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => panic!("no answer to a raw h2 request within 20 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return Raw::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The fields of a plain request for `path` (`:authority` as the client
/// would send it), then `extra`.
fn req_fields<'a>(
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ];
    f.extend_from_slice(extra);
    f
}

// -------------------------------------------------------------- clusters

/// A proxy with TLS (and h2) in front of a recording upstream that
/// answers `/login` with alice and everything else with 200; `limits` as
/// `[limits]` keys. Returns the access token minted for alice at eu-1.
async fn h2_edge(limits: &str) -> (Cluster, RecordingUpstream, Proxy, TlsSet, String) {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let set = c.tls_set("tls");
    let app = RecordingUpstream::start_answering(Arc::new(|r: &Recorded| {
        if r.target() == "/login" {
            (200, "application/json", br#"{"userId":"alice"}"#.to_vec())
        } else {
            (200, "text/plain", b"recorded\n".to_vec())
        }
    }))
    .await;
    let p = c
        .proxy("eu-1", "eu")
        .upstream_addr(app.addr)
        .tls(&set.cert, &set.key)
        .limits(limits)
        .start()
        .await;
    let (access, _) = mint(&p.config, "alice", "eu-1", "eu");
    (c, app, p, set, access)
}

/// Waits until the app has seen `n` requests (other than health checks).
async fn app_saw(app: &RecordingUpstream, n: usize) -> Vec<Recorded> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = app.app_requests();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

// ------------------------------------------------------------------ tests

/// ALPN: the TLS listener offers `h2` then `http/1.1` by default, and
/// `http/1.1` alone with `server.tls_http2 = false`; a client without ALPN
/// gets HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http11() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let set = c.tls_set("tls");
    let app = Upstream::start("app").await;
    let on = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .tls(&set.cert, &set.key)
        .start()
        .await;
    let port = on.addr.port();
    assert_eq!(
        alpn_of(&tls(port, &set.ca, &[H2, H1]).await).as_deref(),
        Some(H2)
    );
    assert_eq!(
        alpn_of(&tls(port, &set.ca, &[H1, H2]).await).as_deref(),
        Some(H2)
    );
    assert_eq!(
        alpn_of(&tls(port, &set.ca, &[H1]).await).as_deref(),
        Some(H1)
    );
    assert_eq!(
        alpn_of(&tls(port, &set.ca, &[H2]).await).as_deref(),
        Some(H2)
    );
    // No ALPN: HTTP/1.1 on the same listener.
    let mut s = tls(port, &set.ca, &[]).await;
    assert_eq!(alpn_of(&s), None);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // And h2 on it.
    let mut h2 = h2_connect(port, &set.ca).await;
    let a = h2.get("/healthz", None).await;
    assert_eq!((a.status, a.version), (200, http::Version::HTTP_2));

    // Off: http/1.1 only, whatever the client prefers.
    let off = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .tls(&set.cert, &set.key)
        .server_extra("tls_http2 = false")
        .start()
        .await;
    let port = off.addr.port();
    assert_eq!(
        alpn_of(&tls(port, &set.ca, &[H2, H1]).await).as_deref(),
        Some(H1)
    );
}

/// Login, a locked request served locally, and another server's token:
/// over h2 the verdicts are HTTP/1.1's (relock hint, one forwarded hop,
/// refresh), and the upstream sees the verified identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_the_lock_over_h2() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let set = c.tls_set("tls");
    let app_a = Upstream::start("app-eu").await;
    let app_b = Upstream::start("app-us").await;
    let app_f = Upstream::start("app-us2").await;
    // A in clear (the server alice is locked to); B (relock hints) and F
    // (forwarding) over TLS with h2.
    let a = c.proxy("eu-1", "eu").upstream(&app_a).start().await;
    let b = c
        .proxy("us-1", "us")
        .upstream(&app_b)
        .tls(&set.cert, &set.key)
        .start()
        .await;
    let f = c
        .proxy("us-2", "us")
        .upstream(&app_f)
        .tls(&set.cert, &set.key)
        .forward()
        .start()
        .await;
    for p in [&a, &b, &f] {
        p.wait_sees(&c.http, &["eu-1", "us-1", "us-2"]).await;
    }
    let mut hb = h2_connect(b.addr.port(), &set.ca).await;
    let mut hf = h2_connect(f.addr.port(), &set.ca).await;

    // Login over h2 at B: tokens in the answer's headers, locked to B.
    let login = hb
        .send(
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            json!({"username": "bob", "password": "pw", "home": "us"})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("login over h2");
    assert_eq!(login.status, 200, "{:?}", login);
    assert_eq!(login.version, http::Version::HTTP_2);
    assert_eq!(login.header("tether-server-id"), Some("us-1"));
    assert_eq!(login.header("tether-server-url"), Some(b.url.as_str()));
    let bob = login
        .header("tether-access-token")
        .expect("access token")
        .to_owned();

    // A locked request, served by B's upstream with bob's identity.
    let before = app_b.requests();
    let r = hb.get("/orders/1", Some(&bob)).await;
    assert_eq!(r.status, 200, "{:?}", r);
    assert_eq!(r.json()["upstream"], "app-us");
    assert_eq!(r.json()["subject"], "bob");
    assert_eq!(app_b.requests(), before + 1);
    let seen = app_b.last().unwrap();
    assert_eq!(seen.headers["x-tether-subject"], "bob");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(!seen.headers.contains_key("x-tether-hop"));

    // Alice is locked to A: B hints a relock, F forwards one hop.
    let alice = login_at(&c, &a.url, "alice").await;
    let r = hb.get("/orders/7", Some(&alice)).await;
    assert_eq!(r.status, 421, "{:?}", r);
    assert_eq!(r.header("tether-relock"), Some(a.url.as_str()));
    assert_eq!(r.json()["error"], "wrong_server");
    assert_eq!(app_b.requests(), before + 1);
    let before_a = app_a.requests();
    let r = hf.get("/orders/8", Some(&alice)).await;
    assert_eq!(r.status, 200, "{:?}", r);
    assert_eq!(r.json()["upstream"], "app-eu");
    assert_eq!(r.json()["subject"], "alice");
    assert_eq!(app_a.requests(), before_a + 1);
    assert_eq!(app_f.requests(), 0);
    assert!(!app_a.last().unwrap().headers.contains_key("x-tether-hop"));

    // A token for a server nobody knows: refresh, on both.
    let (gone, _) = mint(&b.config, "carol", "gone-9", "us");
    for h in [&mut hb, &mut hf] {
        let r = h.get("/orders/9", Some(&gone)).await;
        assert_eq!(r.status, 503, "{:?}", r);
        assert_eq!(r.header("tether-relock"), Some("refresh"));
    }
    // No token, a bad token: 401, nothing forwarded.
    let r = hb.get("/orders/1", None).await;
    assert_eq!(r.status, 401);
    let r = hb.get("/orders/1", Some("not.a.token")).await;
    assert_eq!(r.status, 401);
    assert_eq!(app_b.requests(), before + 1);
    // All of it on one connection each, as a browser would.
}

/// A login over plain HTTP/1.1 (reqwest), for a token locked elsewhere.
async fn login_at(c: &Cluster, url: &str, user: &str) -> String {
    login(&c.http, url, user, None).await.access
}

/// The proxy's own headers in every spelling h2 allows (lowercase, `-` or
/// `_`) never reach the app, on the token path, a public path and the
/// login call; forwarding headers are the proxy's view of the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_and_forwarding_headers_are_stripped_over_h2() {
    let (_c, app, p, set, access) = h2_edge("").await;
    let mut h = h2_connect(p.addr.port(), &set.ca).await;
    let auth = format!("Bearer {access}");
    let spellings = [
        ("x_tether_subject", "admin"),
        ("x-tether_subject", "admin"),
        ("x_tether-subject", "admin"),
        ("x-tether-subject", "admin"),
        ("x-tether-server", "eu-9"),
        ("x_tether_server", "eu-9"),
        ("tether-access-token", "x"),
        ("tether_access_token", "x"),
        ("tether-server-id", "eu-9"),
        ("x-tether-hop", "forged"),
        ("x_tether_hop", "forged"),
        ("x_custom_header", "1"),
    ];
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6;proto=http"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-port", "80"),
        ("x-real-ip", "6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x_forwarded_for", "6.6.6.6"),
    ];
    let mut cases = 0;
    for spelling in spellings {
        for what in ["token path", "public path", "login"] {
            cases += 1;
            app.clear();
            let mut headers = vec![spelling];
            headers.extend_from_slice(&forged);
            let a = match what {
                "token path" => {
                    headers.push(("authorization", &auth));
                    h.send("GET", "/orders", &headers, b"").await
                }
                "public path" => h.send("GET", "/public/x", &headers, b"").await,
                _ => {
                    headers.push(("content-type", "application/json"));
                    h.send("POST", "/auth/login", &headers, b"{}").await
                }
            }
            .unwrap_or_else(|e| panic!("[{what}, {spelling:?}] {e}"));
            if spelling.0 == "x-tether-hop" && what == "token path" {
                // A forged hop marker on a token request is refused, as
                // over HTTP/1.1.
                assert_eq!(a.status, 403, "[{what}, {spelling:?}] {a:?}");
                assert_eq!(a.json()["error"], "invalid_hop");
                assert!(app_saw(&app, 1).await.is_empty());
                continue;
            }
            assert_eq!(a.status, 200, "[{what}, {spelling:?}] {a:?}");
            let got = app_saw(&app, 1).await;
            assert_eq!(got.len(), 1, "[{what}, {spelling:?}] app requests");
            let seen = &got[0];
            assert!(
                seen.head().starts_with(&format!(
                    "{} ",
                    if what == "login" { "POST" } else { "GET" }
                )) && seen.head().lines().next().unwrap().ends_with("HTTP/1.1"),
                "[{what}] upstream request line: {}",
                seen.head()
            );
            for name in names(seen) {
                assert!(
                    !name.contains('_'),
                    "[{what}, {spelling:?}] reached the app: {name}"
                );
                let lower = name.to_ascii_lowercase();
                if lower.starts_with("tether-") {
                    panic!("[{what}, {spelling:?}] reached the app: {name}");
                }
            }
            let subjects = seen.header_values("x-tether-subject");
            let servers = seen.header_values("x-tether-server");
            if what == "token path" {
                assert_eq!(subjects, ["alice"], "[{what}, {spelling:?}] subject");
                assert_eq!(servers, ["eu-1"], "[{what}, {spelling:?}] server");
            } else {
                assert!(subjects.is_empty(), "[{what}, {spelling:?}] {subjects:?}");
                assert!(servers.is_empty(), "[{what}, {spelling:?}] {servers:?}");
            }
            assert!(
                seen.header_values("x-tether-hop").is_empty(),
                "[{what}, {spelling:?}] hop marker reached the app"
            );
            assert_eq!(seen.header_values("x-forwarded-for"), ["127.0.0.1"]);
            assert_eq!(
                seen.header_values("forwarded"),
                ["for=127.0.0.1;proto=https"],
                "[{what}] Forwarded"
            );
            assert_eq!(seen.header_values("x-forwarded-proto"), ["https"]);
            for dropped in [
                "x-forwarded-host",
                "x-forwarded-port",
                "x-real-ip",
                "x-original-url",
                "x-rewrite-url",
            ] {
                assert!(
                    seen.header_values(dropped).is_empty(),
                    "[{what}] {dropped} reached the app"
                );
            }
            // h2 has no Host: a forwarded request gets one from
            // :authority (the login call is the proxy's own request).
            if what != "login" {
                assert_eq!(
                    seen.header_values("host"),
                    [format!("localhost:{}", p.addr.port())],
                    "[{what}] Host"
                );
            }
        }
    }
    assert_eq!(cases, spellings.len() * 3);
}

/// Path canonicalisation and refusals over h2, `:path` written byte for
/// byte: the same verdicts as the HTTP/1.1 corpus (`tests/corpus/edge.rs`,
/// paths), except that a `:path` the h2 layer itself finds malformed may be
/// a stream reset instead of `400`; either way the app sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_over_h2() {
    let (_c, app, p, set, access) = h2_edge("").await;
    let port = p.addr.port();
    let authority = format!("localhost:{port}");
    let cases: Vec<(&str, u16, Option<&str>)> = vec![
        ("/public/../secret", 401, None),
        ("/public/%2e%2e/secret", 401, None),
        ("/public/%2E%2E/secret", 401, None),
        ("/public/.%2e/secret", 401, None),
        ("/public/./../secret", 401, None),
        ("/public/x/../../secret", 401, None),
        ("/public/../secret?x=1", 401, None),
        ("/public/..", 401, None),
        ("//public/../secret", 401, None),
        ("/PUBLIC/x", 401, None),
        ("/publ%69c/../secret", 401, None),
        ("/public/..%2fsecret", 400, None),
        ("/public/..%2Fsecret", 400, None),
        ("/public%2f..%2fsecret", 400, None),
        ("/public/..%5csecret", 400, None),
        ("/public/..;/secret", 400, None),
        ("/public/%2e%2e;x/secret", 400, None),
        ("/public/%252e%252e/secret", 400, None),
        ("/public/..%252fsecret", 400, None),
        ("/public/%25%32%65%25%32%65/secret", 400, None),
        ("/public/%u002e%u002e/secret", 400, None),
        ("/public/%00/x", 400, None),
        ("/public/%0d%0aX-Injected:%201", 400, None),
        ("/public/%zz", 400, None),
        ("/../secret", 400, None),
        ("/public/../../secret", 400, None),
        ("/public\\..\\secret", 400, None),
        // Not origin form: malformed in h2 (RFC 9113 §8.3.1).
        ("*", 400, None),
        ("public/x", 400, None),
        // Canonical and still public: forwarded, canonical.
        ("/public/./a.css", 200, Some("/public/a.css")),
        ("/public/%61.css", 200, Some("/public/a.css")),
        ("/public/x/../a.css", 200, Some("/public/a.css")),
        ("/public/a?x=/../y", 200, Some("/public/a?x=/../y")),
    ];
    let mut resets = Vec::new();
    for (target, want, seen) in &cases {
        app.clear();
        let got = raw_h2(
            port,
            &set.ca,
            &req_fields("GET", &authority, target, &[]),
            b"",
            false,
        )
        .await;
        if *want == 400 && matches!(got, Raw::Reset(_)) {
            resets.push(*target);
        } else {
            assert_eq!(got, Raw::Status(*want), "[path {target:?}]");
        }
        let saw = app_saw(&app, usize::from(seen.is_some())).await;
        match seen {
            None => assert!(
                saw.is_empty(),
                "[path {target:?}] reached the app: {:?}",
                saw.iter().map(Recorded::target).collect::<Vec<_>>()
            ),
            Some(t) => {
                assert_eq!(saw.len(), 1, "[path {target:?}] app requests");
                assert_eq!(saw[0].target(), *t, "[path {target:?}] forwarded target");
            }
        }
    }
    println!(
        "paths over h2: {} cases; reset by the h2 layer: {resets:?}",
        cases.len()
    );
    // With a token (h2 crate client), the app gets the canonical path.
    let mut h = h2_connect(port, &set.ca).await;
    app.clear();
    let a = h.get("/orders/../orders/1", Some(&access)).await;
    assert_eq!(a.status, 200);
    assert_eq!(app_saw(&app, 1).await[0].target(), "/orders/1");
    let a = h.get("/orders/%2F/1", Some(&access)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "invalid_path");
}

/// The body size limit on `/auth/*`, the header limits and a stalled
/// body hold over h2: 413, 431, 408, never a 5xx, and nothing reaches the
/// app that should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_over_h2() {
    let (_c, app, p, set, access) = h2_edge(
        "reserved_body_bytes = 1024\nmax_request_headers = 20\nbody_read_timeout_ms = 1000",
    )
    .await;
    let port = p.addr.port();
    let authority = format!("localhost:{port}");
    let mut h = h2_connect(port, &set.ca).await;

    // Over the body limit, declared or not.
    let big = vec![b'x'; 4096];
    let len = big.len().to_string();
    let a = h
        .send(
            "POST",
            "/auth/login",
            &[
                ("content-type", "application/json"),
                ("content-length", &len),
            ],
            &big,
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 413, "{a:?}");
    let mut h = h2_connect(port, &set.ca).await;
    let a = h
        .send(
            "POST",
            "/auth/login",
            &[("content-type", "application/json")],
            &big,
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 413, "{a:?}");

    // Over the header count: 431, not forwarded.
    app.clear();
    let auth = format!("Bearer {access}");
    let many: Vec<String> = (0..30).map(|i| format!("x-extra-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = many.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("authorization", &auth));
    let mut h = h2_connect(port, &set.ca).await;
    let a = h
        .send("GET", "/orders", &headers, b"")
        .await
        .expect("answer");
    assert_eq!(a.status, 431, "{a:?}");
    assert!(app_saw(&app, 1).await.is_empty());
    // Over the header bytes (16 KiB by default), under the h2 codec's
    // bound: the proxy's own 431.
    let big = "v".repeat(20 * 1024);
    let a = h
        .send(
            "GET",
            "/orders",
            &[("authorization", &auth), ("x-big", &big)],
            b"",
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 431, "{a:?}");
    assert!(app_saw(&app, 1).await.is_empty());
    // Over the h2 codec's own bound (SETTINGS_MAX_HEADER_LIST_SIZE: what
    // the limits accept plus 32 bytes a field and 64 KiB, here about 81
    // KiB), in HEADERS and CONTINUATION frames: refused by the codec (a
    // 4xx or a reset), never a 5xx, not forwarded, and the proxy serves
    // the next request.
    let huge = "v".repeat(128 * 1024);
    let got = raw_h2(
        port,
        &set.ca,
        &req_fields(
            "GET",
            &authority,
            "/orders",
            &[("authorization", &auth), ("x-huge", &huge)],
        ),
        b"",
        false,
    )
    .await;
    println!("header block over the codec's bound: {got:?}");
    // Refused by the codec: `GOAWAY ENHANCE_YOUR_CALM` here, or the
    // connection closed before that frame could be read (the server
    // closes with the rest of the block unread).
    assert!(
        got.refused() || got == Raw::Closed,
        "header block over the codec's bound: {got:?}"
    );
    assert!(app_saw(&app, 1).await.is_empty());
    let mut h = h2_connect(port, &set.ca).await;
    let a = h
        .send("GET", "/orders", &[("authorization", &auth)], b"")
        .await
        .expect("answer");
    assert_eq!(a.status, 200, "after the oversized block: {a:?}");
    app.clear();

    // A stalled body on the login call: 408 once the body read timeout
    // (1 s) passes.
    let t = Instant::now();
    let got = raw_h2(
        port,
        &set.ca,
        &req_fields(
            "POST",
            &authority,
            "/auth/login",
            &[
                ("content-type", "application/json"),
                ("content-length", "10"),
            ],
        ),
        b"{\"a",
        true,
    )
    .await;
    assert_eq!(got, Raw::Status(408), "stalled login body");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A stalled body on the token path: a 4xx, never a 5xx.
    let t = Instant::now();
    let got = raw_h2(
        port,
        &set.ca,
        &req_fields(
            "POST",
            &authority,
            "/orders",
            &[("authorization", &auth), ("content-length", "10")],
        ),
        b"ab",
        true,
    )
    .await;
    println!("stalled proxied body: {got:?} after {:?}", t.elapsed());
    assert!(got.refused(), "stalled proxied body: {got:?}");

    // A retry whose Idempotency-Key already has a stored answer has its
    // body read by the proxy (to compare fingerprints): a stalled one
    // gets 408 within the body read timeout, not a hang.
    let mut h = h2_connect(port, &set.ca).await;
    let a = h
        .send(
            "POST",
            "/orders",
            &[
                ("authorization", &auth),
                ("idempotency-key", "h2-stall-1"),
                ("content-length", "10"),
            ],
            b"abcdefghij",
        )
        .await
        .expect("answer");
    assert_eq!(a.status, 200, "first keyed POST: {a:?}");
    let t = Instant::now();
    let got = raw_h2(
        port,
        &set.ca,
        &req_fields(
            "POST",
            &authority,
            "/orders",
            &[
                ("authorization", &auth),
                ("idempotency-key", "h2-stall-1"),
                ("content-length", "10"),
            ],
        ),
        b"abcde",
        true,
    )
    .await;
    assert_eq!(got, Raw::Status(408), "stalled keyed retry");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stalled keyed retry answered after {:?}",
        t.elapsed()
    );
}

/// What RFC 9113 makes malformed (`:authority` and `host` that disagree,
/// connection-specific headers, an upper-case name, no `:path`) is
/// refused: a 4xx or a stream reset, never a 5xx, never forwarded, and the
/// proxy carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_h2_requests_are_refused_not_5xx() {
    let (_c, app, p, set, access) = h2_edge("").await;
    let port = p.addr.port();
    let authority = format!("localhost:{port}");
    let auth = format!("Bearer {access}");
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = req_fields(
            "GET",
            &authority,
            "/orders",
            &[("authorization", auth.as_str())],
        )
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        f.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        f
    };
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "host disagrees with :authority",
            with(&[("host", "evil.example")]),
        ),
        ("connection", with(&[("connection", "keep-alive")])),
        ("keep-alive", with(&[("keep-alive", "timeout=5")])),
        (
            "proxy-connection",
            with(&[("proxy-connection", "keep-alive")]),
        ),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
        ),
        ("upgrade", with(&[("upgrade", "websocket")])),
        ("te other than trailers", with(&[("te", "gzip")])),
        ("upper-case name", with(&[("X-Tether-Subject", "admin")])),
        (
            "no :path",
            vec![
                (":method".into(), "GET".into()),
                (":scheme".into(), "https".into()),
                (":authority".into(), authority.clone()),
            ],
        ),
    ];
    for (what, fields) in &cases {
        app.clear();
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = raw_h2(port, &set.ca, &fields, b"", false).await;
        println!("{what}: {got:?}");
        assert!(got.refused(), "[{what}] {got:?}");
        assert!(
            app_saw(&app, 1).await.is_empty(),
            "[{what}] reached the app"
        );
    }
    // The same request without the fault is served.
    let got = raw_h2(
        port,
        &set.ca,
        &with(&[])
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        b"",
        false,
    )
    .await;
    assert_eq!(got, Raw::Status(200));
    // And the h2 crate client still gets through.
    let mut h = h2_connect(port, &set.ca).await;
    assert_eq!(h.get("/orders", Some(&access)).await.status, 200);
}

/// The request-head deadline covers the h2 connection preface: a client
/// that negotiates h2 and then trickles (or withholds) its preface is cut
/// off after `header_read_timeout_ms`, as a slow HTTP/1.1 head is; one that
/// sends it is served and not cut off at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_deadline_covers_the_h2_preface() {
    let (_c, _app, p, set, access) = h2_edge("header_read_timeout_ms = 1500").await;
    let port = p.addr.port();
    for (what, sent) in [
        ("half a preface", &b"PRI * HTTP/2.0\r\n"[..]),
        ("nothing", &b""[..]),
    ] {
        let mut s = tls(port, &set.ca, &[H2]).await;
        assert_eq!(alpn_of(&s).as_deref(), Some(H2));
        s.write_all(sent).await.unwrap();
        s.flush().await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => {}
            }
        };
        assert!(closed, "[{what}] not closed within 8 s");
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "[{what}] closed after {:?}, before the 1.5 s deadline",
            t.elapsed()
        );
    }
    // A whole preface, then requests past the deadline on the same
    // connection.
    let mut h = h2_connect(port, &set.ca).await;
    assert_eq!(h.get("/orders", Some(&access)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(h.get("/orders", Some(&access)).await.status, 200);
}

/// `limits.h2_idle_timeout_ms`: a connection with no open stream is
/// closed after it, and one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed() {
    let (_c, _app, p, set, access) = h2_edge("h2_idle_timeout_ms = 1500").await;
    let s = tls(p.addr.port(), &set.ca, &[H2]).await;
    assert_eq!(alpn_of(&s).as_deref(), Some(H2));
    let (send, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(Instant::now());
    });
    let mut h = H2Conn {
        send,
        authority: format!("localhost:{}", p.addr.port()),
    };
    // Requests 0.5 s apart, over twice the idle time in all: each resets
    // the clock, so the connection stays.
    for _ in 0..7 {
        assert_eq!(h.get("/orders", Some(&access)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(h.get("/orders", Some(&access)).await.status, 200);
    let last = Instant::now();
    // Then nothing: the proxy closes it, not before the idle time.
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("an idle connection closed within 10 s")
        .expect("the connection task reports");
    let idle = closed.duration_since(last);
    assert!(
        idle >= Duration::from_millis(1000),
        "closed after {idle:?} idle, before the 1.5 s idle time"
    );
}
