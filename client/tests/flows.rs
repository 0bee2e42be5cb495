//! The SDK's retry and refresh flows against a scripted stand-in for the
//! proxy (real HTTP on 127.0.0.1, ephemeral ports). The stand-in follows
//! docs/design.md §4 only as far as each flow needs; the real proxy's
//! end-to-end tests live in the root package.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tether_client::{Client, Error, Event, RefreshCause, Routing, SERVER_CHANGED_MESSAGE};
use tokio::net::TcpListener;

#[derive(Default)]
struct World {
    /// Live servers: id → URL.
    servers: HashMap<String, String>,
    /// Server a login locks to; default: the one answering.
    login_to: Option<String>,
    /// Server the next refresh moves to; default: keep, or the answering
    /// server when `unreachableServerId` is given.
    refresh_to: Option<String>,
    expires_in: u64,
    revoked: bool,
    /// App requests to answer 401 invalid_token / 503 refresh first.
    invalid_token_answers: u32,
    unavailable_answers: u32,
    refreshes: Vec<Value>,
    closest_calls: u32,
    app_hits: HashMap<String, u32>,
    logouts: u32,
    next: u64,
    /// Every app request: (server id, its `Idempotency-Key`, method).
    keys: Vec<(String, Option<String>, String)>,
    /// App requests to answer with the proxy's `409` in-flight problem
    /// first.
    in_flight_answers: u32,
    /// Mark app answers `Idempotent-Replayed: true`.
    replayed: bool,
}

type Shared = Arc<Mutex<World>>;

#[derive(Clone)]
struct Server {
    id: String,
    world: Shared,
}

fn token_srv(token: &str) -> Option<&str> {
    // "at.<srv>.<n>" / "rt.<srv>.<n>"
    token.split('.').nth(1)
}

fn lock_headers(w: &mut World, srv: &str) -> HeaderMap {
    w.next += 1;
    let n = w.next;
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        h.insert(k, HeaderValue::from_str(&v).unwrap());
    };
    set("tether-access-token", format!("at.{srv}.{n}"));
    set("tether-refresh-token", format!("rt.{srv}.{n}"));
    set("tether-expires-in", w.expires_in.to_string());
    set("tether-server-id", srv.to_owned());
    set("tether-server-url", w.servers[srv].clone());
    set("tether-server-region", format!("r-{srv}"));
    h
}

fn summary(w: &World, srv: &str) -> Value {
    json!({"id": srv, "url": w.servers[srv], "region": format!("r-{srv}")})
}

async fn login(State(s): State<Server>, Json(body): Json<Value>) -> Response {
    let mut w = s.world.lock().unwrap();
    match body["username"].as_str() {
        Some("bad") => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error":"bad_credentials"})),
        )
            .into_response(),
        Some("noheaders") => Json(json!({"userId":"x"})).into_response(),
        _ => {
            let srv = w.login_to.clone().unwrap_or(s.id.clone());
            let h = lock_headers(&mut w, &srv);
            (
                h,
                Json(json!({"userId": body["username"], "homeRegion": null})),
            )
                .into_response()
        }
    }
}

async fn refresh(State(s): State<Server>, Json(body): Json<Value>) -> Response {
    let mut w = s.world.lock().unwrap();
    w.refreshes.push(body.clone());
    if w.revoked {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error":"invalid_token","detail":"revoked"})),
        )
            .into_response();
    }
    let current = token_srv(body["refreshToken"].as_str().unwrap())
        .unwrap()
        .to_owned();
    let next = match w.refresh_to.take() {
        Some(t) => t,
        None if body.get("unreachableServerId").is_some() => s.id.clone(),
        None => current.clone(),
    };
    w.next += 1;
    let n = w.next;
    let answer = json!({
        "accessToken": format!("at.{next}.{n}"),
        "refreshToken": format!("rt.{next}.{n}"),
        "tokenType": "Bearer",
        "expiresIn": w.expires_in,
        "server": summary(&w, &next),
        "serverChanged": next != current,
        "previousServerId": current,
        "reason": if next != current { "server_down" } else { "kept" },
    });
    Json(answer).into_response()
}

async fn closest(State(s): State<Server>) -> Json<Value> {
    let mut w = s.world.lock().unwrap();
    w.closest_calls += 1;
    Json(json!({"closestServerId": s.id, "region": format!("r-{}", s.id), "url": w.servers[&s.id]}))
}

async fn logout(State(s): State<Server>, Json(body): Json<Value>) -> StatusCode {
    let mut w = s.world.lock().unwrap();
    assert!(body["refreshToken"].as_str().unwrap().starts_with("rt."));
    w.logouts += 1;
    w.revoked = true;
    StatusCode::NO_CONTENT
}

async fn app(State(s): State<Server>, req: Request) -> Response {
    let mut w = s.world.lock().unwrap();
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    w.keys
        .push((s.id.clone(), key, req.method().as_str().to_owned()));
    if w.in_flight_answers > 0 {
        w.in_flight_answers -= 1;
        return (
            StatusCode::CONFLICT,
            [
                ("content-type", "application/problem+json"),
                ("retry-after", "0"),
            ],
            r#"{"type":"urn:tether:problem:idempotency-key-in-flight","title":"t","status":409,"detail":"d"}"#,
        )
            .into_response();
    }
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    if w.invalid_token_answers > 0 {
        w.invalid_token_answers -= 1;
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error":"invalid_token","detail":"expired"})),
        )
            .into_response();
    }
    let Some(srv) = token_srv(&token).map(str::to_owned) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error":"invalid_token"})),
        )
            .into_response();
    };
    if w.unavailable_answers > 0 || !w.servers.contains_key(&srv) {
        w.unavailable_answers = w.unavailable_answers.saturating_sub(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("tether-relock", "refresh"), ("retry-after", "1")],
            Json(json!({"error":"server_unavailable","action":"refresh"})),
        )
            .into_response();
    }
    if srv != s.id {
        let url = w.servers[&srv].clone();
        return (
            StatusCode::MISDIRECTED_REQUEST,
            [("tether-relock", url)],
            Json(json!({"error":"wrong_server","lockedServer": summary(&w, &srv)})),
        )
            .into_response();
    }
    *w.app_hits.entry(s.id.clone()).or_default() += 1;
    let mut res = Json(json!({"servedBy": s.id, "path": req.uri().path()})).into_response();
    if w.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// Starts stand-in servers with these ids; returns their URLs.
async fn start(world: &Shared, ids: &[&str]) -> Vec<String> {
    let mut urls = Vec::new();
    for id in ids {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        world
            .lock()
            .unwrap()
            .servers
            .insert(id.to_string(), url.clone());
        let state = Server {
            id: id.to_string(),
            world: world.clone(),
        };
        let router = Router::new()
            .route("/auth/login", post(login))
            .route("/auth/refresh", post(refresh))
            .route("/auth/logout", post(logout))
            .route("/closestToMe", get(closest))
            .fallback(app)
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        urls.push(url);
    }
    urls
}

/// A URL on which nothing listens: connecting is refused.
async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn world() -> Shared {
    Arc::new(Mutex::new(World {
        expires_in: 120,
        ..World::default()
    }))
}

fn client(global: &str) -> Client {
    Client::builder()
        .global_url(global)
        .reconnect_wait(Duration::from_millis(20))
        .max_reconnect_attempts(2)
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn login_locks_and_requests_go_to_the_locked_server() {
    let w = world();
    let urls = start(&w, &["a", "b"]).await;
    w.lock().unwrap().login_to = Some("b".into());
    let c = client(&urls[0]);
    let mut events = c.events();
    let login = c
        .login(&json!({"username":"alice","password":"demo"}))
        .await
        .unwrap();
    assert_eq!(login.server.id, "b");
    assert_eq!(login.server.url, urls[1]);
    assert_eq!(login.expires_in, Duration::from_secs(120));
    assert_eq!(login.response.json::<Value>().unwrap()["userId"], "alice");
    let res = c.get("/orders/1").await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json::<Value>().unwrap()["servedBy"], "b");
    assert_eq!(res.url, format!("{}/orders/1", urls[1]));
    assert!(matches!(&drain(&mut events)[..], [Event::LoggedIn { server }] if server.id == "b"));
    let st = c.stats();
    assert_eq!(
        (st.logins, st.requests, st.retries, st.refreshes),
        (1, 1, 0, 0)
    );
}

#[tokio::test]
async fn global_routing_follows_421() {
    let w = world();
    let urls = start(&w, &["a", "b"]).await;
    w.lock().unwrap().login_to = Some("b".into());
    let c = Client::builder()
        .global_url(&urls[0])
        .routing(Routing::Global)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    let mut events = c.events();
    let res = c.post("/orders", &json!({"userId":"alice"})).await.unwrap();
    assert_eq!(res.json::<Value>().unwrap()["servedBy"], "b");
    assert!(
        matches!(&drain(&mut events)[..], [Event::Relocked { from_url, to }] if from_url == &urls[0] && to.id == "b")
    );
    assert_eq!((c.stats().relocks, c.stats().retries), (1, 1));
    assert_eq!(w.lock().unwrap().app_hits.get("a"), None);
}

#[tokio::test]
async fn dead_server_fails_over_at_once_with_unreachable_server_id() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    // Lock to "d", whose URL refuses connections.
    let dead = dead_url().await;
    w.lock().unwrap().servers.insert("d".into(), dead.clone());
    w.lock().unwrap().login_to = Some("d".into());
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    assert_eq!(c.server().unwrap().url, dead);
    let mut events = c.events();
    let res = c.post("/orders", &json!({})).await.unwrap();
    assert_eq!(res.json::<Value>().unwrap()["servedBy"], "a");
    let refresh = w.lock().unwrap().refreshes.pop().unwrap();
    assert_eq!(refresh["unreachableServerId"], "d");
    assert_eq!(refresh["closestServerId"], "a");
    assert_eq!(refresh["criticalTaskInProgress"], false);
    let ev = drain(&mut events);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::ServerChanged { from, to, reason }
        if from.id == "d" && to.id == "a" && reason == "server_down")),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Refreshed {
            cause: RefreshCause::Unreachable,
            ..
        }
    )));
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Reconnecting { .. })),
        "no wait on the fast path"
    );
    let st = c.stats();
    assert_eq!(
        (st.failovers, st.server_changes, st.reconnect_waits),
        (1, 1, 0)
    );
    assert_eq!(c.server().unwrap().id, "a");
    assert!(SERVER_CHANGED_MESSAGE.contains("synced within 5 minutes"));
}

#[tokio::test]
async fn nothing_reachable_waits_then_gives_up() {
    let dead = dead_url().await;
    let w = world();
    let urls = start(&w, &["a"]).await;
    w.lock().unwrap().servers.insert("d".into(), dead.clone());
    w.lock().unwrap().login_to = Some("d".into());
    // Log in through a live global, then let the global die too.
    let global = Arc::new(Mutex::new(urls[0].clone()));
    let g = global.clone();
    let c = Client::builder()
        .resolver(Arc::new(move || g.lock().unwrap().clone()))
        .reconnect_wait(Duration::from_millis(20))
        .max_reconnect_attempts(2)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    *global.lock().unwrap() = dead.clone();
    let mut events = c.events();
    let err = c.get("/x").await.unwrap_err();
    assert!(
        matches!(err, Error::NoServerAvailable { attempts: 2, .. }),
        "{err}"
    );
    let waits: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Reconnecting { wait, attempt } => Some((wait, attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(
        waits,
        [
            (Duration::from_millis(20), 1),
            (Duration::from_millis(20), 2)
        ]
    );
    // The global comes back: the next call recovers.
    *global.lock().unwrap() = urls[0].clone();
    let res = c.get("/x").await.unwrap();
    assert_eq!(res.json::<Value>().unwrap()["servedBy"], "a");
}

#[tokio::test]
async fn server_unavailable_refreshes_and_retries_once() {
    let w = world();
    let urls = start(&w, &["a", "b"]).await;
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    {
        let mut g = w.lock().unwrap();
        g.unavailable_answers = 1;
        g.refresh_to = Some("b".into());
    }
    let res = c.get("/x").await.unwrap();
    assert_eq!(res.json::<Value>().unwrap()["servedBy"], "b");
    assert_eq!(
        w.lock().unwrap().refreshes.last().unwrap()["unreachableServerId"],
        "a"
    );
    // Twice in a row: the second 503 goes to the caller.
    w.lock().unwrap().unavailable_answers = 2;
    let res = c.get("/x").await.unwrap();
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.stats().refreshes, 2);
}

#[tokio::test]
async fn invalid_token_refreshes_once() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    let before = c.access_token().unwrap();
    w.lock().unwrap().invalid_token_answers = 1;
    assert_eq!(c.get("/x").await.unwrap().status, StatusCode::OK);
    assert_ne!(c.access_token().unwrap(), before);
    w.lock().unwrap().invalid_token_answers = 2;
    let res = c.get("/x").await.unwrap();
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.stats().refreshes, 2);
}

#[tokio::test]
async fn refreshes_before_expiry_and_reports_critical_tasks() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    w.lock().unwrap().expires_in = 1;
    let c = Client::builder()
        .global_url(&urls[0])
        .refresh_margin(0.5)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    c.get("/x").await.unwrap();
    assert_eq!(c.stats().refreshes, 0, "fresh token: no refresh");
    let task = c.critical_task();
    assert_eq!(c.critical_tasks(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut events = c.events();
    c.get("/x").await.unwrap();
    assert_eq!(c.stats().refreshes, 1);
    assert!(matches!(
        &drain(&mut events)[..],
        [Event::Refreshed {
            cause: RefreshCause::Expiry,
            server_changed: false,
            ..
        }]
    ));
    {
        let g = w.lock().unwrap();
        assert_eq!(g.refreshes[0]["criticalTaskInProgress"], true);
        assert_eq!(g.closest_calls, 1);
    }
    drop(task);
    assert_eq!(c.critical_tasks(), 0);
    c.refresh().await.unwrap();
    assert_eq!(
        w.lock().unwrap().refreshes[1]["criticalTaskInProgress"],
        false
    );
}

#[tokio::test]
async fn refused_refresh_ends_the_session() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    w.lock().unwrap().revoked = true;
    let err = c.refresh().await.unwrap_err();
    assert!(matches!(&err, Error::SessionExpired { .. }), "{err}");
    assert_eq!(err.code(), Some("invalid_token"));
    assert!(!c.is_logged_in());
    assert!(matches!(c.get("/x").await.unwrap_err(), Error::NotLoggedIn));
}

#[tokio::test]
async fn login_failures_are_typed() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    let c = client(&urls[0]);
    let err = c.login(&json!({"username":"bad"})).await.unwrap_err();
    assert!(
        matches!(&err, Error::Status { status, .. } if *status == StatusCode::UNAUTHORIZED),
        "{err}"
    );
    assert_eq!(err.code(), Some("bad_credentials"));
    let err = c.login(&json!({"username":"noheaders"})).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadAnswer { what: "login", .. }),
        "{err}"
    );
    assert!(!c.is_logged_in());
    let c = client(&dead_url().await);
    let err = c.login(&json!({"username":"alice"})).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoServerAvailable { attempts: 2, last } if matches!(**last, Error::Connect { .. })),
        "{err}"
    );
    assert!(Client::builder().build().is_err());
    assert!(Client::builder()
        .global_url("http://x")
        .refresh_margin(1.0)
        .build()
        .is_err());
}

#[tokio::test]
async fn logout_revokes_and_forgets() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    c.logout().await.unwrap();
    assert_eq!(w.lock().unwrap().logouts, 1);
    assert!(!c.is_logged_in());
    assert!(matches!(c.logout().await.unwrap_err(), Error::NotLoggedIn));
}

/// A server that accepts, reads one request, then hangs up without
/// answering; returns its address, how many connections it accepted and
/// the raw requests it read.
async fn hang_up_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = tokio::io::AsyncReadExt::read(&mut sock, &mut buf)
                .await
                .unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            drop(sock);
        }
    });
    (addr, seen)
}

fn key_of(raw: &str) -> Option<String> {
    raw.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("idempotency-key")
            .then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn failure_after_connecting_is_not_retried_without_a_key() {
    let (addr, seen) = hang_up_server().await;
    let w = world();
    let urls = start(&w, &["a"]).await;
    w.lock()
        .unwrap()
        .servers
        .insert("h".into(), format!("http://{addr}"));
    w.lock().unwrap().login_to = Some("h".into());
    let c = Client::builder()
        .global_url(&urls[0])
        .reconnect_wait(Duration::from_millis(20))
        .max_reconnect_attempts(2)
        .request_timeout(Duration::from_secs(5))
        .idempotency_keys(false)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    let err = c.post("/orders", &json!({})).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Transport {
                what: "request",
                ..
            }
        ),
        "{err}"
    );
    let raw = seen.lock().unwrap().clone();
    assert_eq!(raw.len(), 1, "not resent");
    assert_eq!(key_of(&raw[0]), None, "keys off: no key");
    assert_eq!(c.stats().retries, 0);
    assert!(w.lock().unwrap().refreshes.is_empty());
}

/// With a key (the default for POST), a lost answer is resent like a
/// failed connection (refresh with `unreachableServerId`), with the same
/// key, so the proxy can answer it from its store.
#[tokio::test]
async fn a_lost_answer_is_resent_with_the_same_key() {
    let (addr, seen) = hang_up_server().await;
    let w = world();
    let urls = start(&w, &["a"]).await;
    w.lock()
        .unwrap()
        .servers
        .insert("h".into(), format!("http://{addr}"));
    w.lock().unwrap().login_to = Some("h".into());
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    let res = c.post("/orders", &json!({})).await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(c.server().unwrap().id, "a", "moved after the lost answer");
    let raw = seen.lock().unwrap().clone();
    assert_eq!(raw.len(), 1);
    let first = key_of(&raw[0]).expect("a POST carries a key");
    assert!(
        first.starts_with('"') && first.ends_with('"') && first.len() == 38,
        "a quoted UUID: {first}"
    );
    let w = w.lock().unwrap();
    assert_eq!(
        w.keys,
        vec![("a".to_owned(), Some(first), "POST".to_owned())],
        "resent once, same key"
    );
    assert_eq!(w.refreshes.len(), 1);
    assert_eq!(w.refreshes[0]["unreachableServerId"], "h");
    assert_eq!(c.stats().retries, 1);
}

/// `409` in-flight problem: wait `Retry-After`, resend with the same key;
/// a replayed answer is counted. Each call has its own key.
#[tokio::test]
async fn in_flight_conflict_is_resent_with_the_same_key() {
    let w = world();
    let urls = start(&w, &["a"]).await;
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    {
        let mut w = w.lock().unwrap();
        w.in_flight_answers = 2;
        w.replayed = true;
    }
    let res = c.post("/orders", &json!({})).await.unwrap();
    assert_eq!(res.status, 200);
    let second = c.post("/orders", &json!({})).await.unwrap();
    assert_eq!(second.status, 200);
    let keys = w.lock().unwrap().keys.clone();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys[0].1.is_some());
    assert!(keys[..3].iter().all(|k| k.1 == keys[0].1), "{keys:?}");
    assert!(
        keys[3].1.is_some() && keys[3].1 != keys[0].1,
        "a fresh key per call"
    );
    let stats = c.stats();
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.replayed, 2);
    // Without keys the proxy's 409 is the caller's answer.
    let c = Client::builder()
        .global_url(&urls[0])
        .idempotency_keys(false)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    w.lock().unwrap().in_flight_answers = 1;
    let res = c.post("/orders", &json!({})).await.unwrap();
    assert_eq!(res.status, 409);
}

#[tokio::test]
async fn a_relock_resends_the_same_key() {
    let w = world();
    let urls = start(&w, &["a", "b"]).await;
    w.lock().unwrap().login_to = Some("b".into());
    let c = Client::builder()
        .global_url(&urls[0])
        .routing(Routing::Global)
        .build()
        .unwrap();
    c.login(&json!({"username":"alice"})).await.unwrap();
    let res = c
        .request(tether_client::Method::PATCH, "/orders/1", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    let keys = w.lock().unwrap().keys.clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0].0, "a");
    assert_eq!(keys[1].0, "b");
    assert!(keys[0].1.is_some());
    assert_eq!(keys[0].1, keys[1].1, "the 421's resend keeps the key");
}

/// A GET carries no key, so a failure after connecting is not resent,
/// keys on or off.
#[tokio::test]
async fn a_get_is_not_resent_after_connecting() {
    let (addr, seen) = hang_up_server().await;
    let w = world();
    let urls = start(&w, &["a"]).await;
    w.lock()
        .unwrap()
        .servers
        .insert("h".into(), format!("http://{addr}"));
    w.lock().unwrap().login_to = Some("h".into());
    let c = client(&urls[0]);
    c.login(&json!({"username":"alice"})).await.unwrap();
    let accepted = seen.clone();
    let err = c.get("/orders").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Transport {
                what: "request",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(accepted.lock().unwrap().len(), 1);
    assert_eq!(key_of(&accepted.lock().unwrap()[0]), None, "GET: no key");
    assert_eq!(c.stats().retries, 0);
    assert!(w.lock().unwrap().refreshes.is_empty());
}
