//! CORS at the proxy (docs/design.md §10), on real `tether proxy`
//! processes: preflights answered without a token for allowed origins
//! only, the `Access-Control-*` headers on every kind of answer, and an
//! app's own CORS headers replaced rather than doubled.

mod common;

use common::*;
use serde_json::json;

const PAGE: &str = "http://127.0.0.1:5173";
const CORS: &str = "allowed_origins = [\"http://127.0.0.1:5173\", \"https://app.example.com\"]\nmax_age_seconds = 120";

/// Every value of header `name`.
fn all(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect()
}

/// The names of the `Access-Control-*` headers of an answer.
fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn varies_on_origin(r: &reqwest::Response) -> bool {
    all(r, "vary").iter().any(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("origin"))
    })
}

/// Checks the headers an allowed origin gets on an ordinary answer.
fn assert_allowed(r: &reqwest::Response, what: &str) {
    assert_eq!(all(r, "access-control-allow-origin"), [PAGE], "{what}");
    assert!(
        all(r, "access-control-allow-credentials").is_empty(),
        "{what}: no credentials"
    );
    let expose = all(r, "access-control-expose-headers");
    assert_eq!(expose.len(), 1, "{what}: one expose header: {expose:?}");
    for h in [
        "Tether-Access-Token",
        "Tether-Refresh-Token",
        "Tether-Expires-In",
        "Tether-Server-Id",
        "Tether-Server-Url",
        "Tether-Server-Region",
        "Tether-Relock",
        "Idempotent-Replayed",
        "Retry-After",
    ] {
        assert!(expose[0].contains(h), "{what}: {h} exposed: {}", expose[0]);
    }
    assert!(varies_on_origin(r), "{what}: Vary: Origin");
}

async fn preflight(http: &reqwest::Client, url: &str, origin: &str) -> reqwest::Response {
    http.request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .expect("preflight")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_answered_without_token_for_allowed_origins_only() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app-eu").await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .cors(CORS)
        .start()
        .await;
    let before = app.requests();

    for path in [
        "/orders/1",
        "/auth/login",
        "/auth/refresh",
        "/closestToMe",
        "/public/x",
    ] {
        let r = preflight(&c.http, &format!("{}{path}", a.url), PAGE).await;
        assert_eq!(r.status(), 204, "{path}");
        assert_eq!(all(&r, "access-control-allow-origin"), [PAGE], "{path}");
        let methods = all(&r, "access-control-allow-methods").join(",");
        for m in ["GET", "POST", "PATCH", "DELETE"] {
            assert!(methods.contains(m), "{path}: {m} in {methods}");
        }
        let allowed = all(&r, "access-control-allow-headers")
            .join(",")
            .to_lowercase();
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(allowed.contains(h), "{path}: {h} in {allowed}");
        }
        assert_eq!(all(&r, "access-control-max-age"), ["120"], "{path}");
        assert!(all(&r, "access-control-allow-credentials").is_empty());
        assert!(varies_on_origin(&r), "{path}");
    }
    // Not one preflight reached the app.
    assert_eq!(app.requests(), before, "preflights stay at the proxy");

    // Other origins: an answer, never a 5xx, and no CORS header at all, so
    // the browser refuses the real request.
    for origin in [
        "null",
        "https://evil.com",
        "http://evil.com.127.0.0.1:5173",
        "http://127.0.0.1:5173.evil.com",
        "https://app.example.com.evil.com",
        "http://127.0.0.1:5173/",
        "HTTPS://APP.EXAMPLE.COM",
        "https://App.example.com",
        "https://app.example.com/path",
        "http://app.example.com",
        "https://app.example.com:443",
        "",
    ] {
        let r = preflight(&c.http, &format!("{}/orders/1", a.url), origin).await;
        assert_eq!(r.status(), 204, "origin {origin:?}");
        assert!(
            cors_headers(&r).is_empty(),
            "origin {origin:?}: {:?}",
            cors_headers(&r)
        );
    }
    assert_eq!(app.requests(), before);

    // A proxy without [cors] keeps today's behaviour: an OPTIONS without
    // a token is a request like any other (401).
    let b = c.proxy("eu-2", "eu").upstream(&app).start().await;
    let r = preflight(&c.http, &format!("{}/orders/1", b.url), PAGE).await;
    assert_eq!(r.status(), 401);
    assert!(cors_headers(&r).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_cors_for_an_allowed_origin() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app_a = Upstream::start("app-eu").await;
    let app_b = Upstream::start("app-us").await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app_a)
        .cors(CORS)
        .start()
        .await;
    let b = c
        .proxy("us-1", "us")
        .upstream(&app_b)
        .cors(CORS)
        .start()
        .await;
    a.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    b.wait_sees(&c.http, &["eu-1", "us-1"]).await;
    let http = &c.http;

    // Login: the tokens are readable by the page.
    let r = http
        .post(format!("{}/auth/login", a.url))
        .header("origin", PAGE)
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(&r, "login");
    let access = all(&r, "tether-access-token").remove(0);
    let refresh = all(&r, "tether-refresh-token").remove(0);

    // A proxied answer.
    let r = http
        .get(format!("{}/orders/1", a.url))
        .header("origin", PAGE)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(&r, "proxied");

    // 401 without a token, and 421 at the wrong server.
    let r = http
        .get(format!("{}/orders/1", a.url))
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_allowed(&r, "401");
    let r = http
        .get(format!("{}/orders/1", b.url))
        .header("origin", PAGE)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_allowed(&r, "421");
    assert_eq!(all(&r, "tether-relock"), [a.url.as_str()]);

    // /closestToMe and /auth/refresh.
    let r = http
        .get(format!("{}/closestToMe", b.url))
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(&r, "closestToMe");
    let r = http
        .post(format!("{}/auth/refresh", b.url))
        .header("origin", PAGE)
        .json(&json!({"refreshToken": refresh, "closestServerId": "us-1", "criticalTaskInProgress": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(&r, "refresh");

    // 503: the locked server is gone (its token still verifies at the
    // other proxy, which tells the client to refresh).
    let l = login(http, &b.url, "bob", Some("us")).await;
    assert_eq!(l.server_id, "us-1");
    drop(b);
    a.wait_gone(http, "us-1").await;
    let r = http
        .get(format!("{}/orders/1", a.url))
        .header("origin", PAGE)
        .bearer_auth(&l.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_allowed(&r, "503");

    // An origin that is not listed gets no CORS header, but the answer
    // still varies on Origin.
    let r = http
        .post(format!("{}/auth/login", a.url))
        .header("origin", "https://evil.com")
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    assert!(varies_on_origin(&r));
}

/// An app with CORS headers of its own (a permissive one, as many have).
async fn cors_app() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::http::HeaderMap;
    async fn any(uri: axum::http::Uri) -> (HeaderMap, axum::Json<serde_json::Value>) {
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", "*".parse().unwrap());
        h.insert("access-control-allow-credentials", "true".parse().unwrap());
        h.insert(
            "access-control-expose-headers",
            "X-App-Region".parse().unwrap(),
        );
        h.insert("vary", "Origin".parse().unwrap());
        h.insert("x-app-region", "eu".parse().unwrap());
        let user = uri.path().trim_start_matches('/').to_owned();
        (h, axum::Json(json!({"userId": user, "homeRegion": null})))
    }
    let app = axum::Router::new().fallback(any);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_cors_headers_are_not_doubled() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let (addr, _task) = cors_app().await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream_addr(addr)
        .cors(CORS)
        .start()
        .await;
    let http = &c.http;
    let l = login(http, &a.url, "alice", None).await;

    let r = http
        .get(format!("{}/orders/1", a.url))
        .header("origin", PAGE)
        .bearer_auth(&l.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_allowed(&r, "app with CORS");
    let expose = all(&r, "access-control-expose-headers").remove(0);
    assert!(
        expose.contains("X-App-Region"),
        "the app's exposed names kept: {expose}"
    );
    assert_eq!(all(&r, "vary").len(), 1, "Vary: Origin not added twice");

    // An origin the proxy does not know: the app's headers pass untouched.
    let r = http
        .get(format!("{}/orders/1", a.url))
        .header("origin", "https://other.example")
        .bearer_auth(&l.access)
        .send()
        .await
        .unwrap();
    assert_eq!(all(&r, "access-control-allow-origin"), ["*"]);
    assert_eq!(all(&r, "access-control-allow-credentials"), ["true"]);
}
