//! The proxy's life around its requests (docs/design.md §11): SIGTERM lets
//! requests in flight finish after a health grace, SIGQUIT hands the
//! listening sockets to a new process under load, and a drain empties a
//! server end to end (SDK clients, `tether drain`, the locked-clients
//! gauge, undrain).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Whether a TCP connection to `addr` is refused now.
async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_health_then_lets_requests_in_flight_finish() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("eu").await;
    let mut eu = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .server_extra("shutdown_grace_seconds = 2\nshutdown_timeout_seconds = 10")
        .start()
        .await;
    eu.wait_sees(&c.http, &["eu-1"]).await;

    // A slow request (2.5 s at the upstream), in flight when SIGTERM comes.
    let url = format!("{}/public/slow?delay_ms=2500", eu.url);
    let http = c.http.clone();
    let slow = tokio::spawn(async move { http.get(url).send().await });
    eventually(
        Duration::from_secs(5),
        "slow request at the upstream",
        || async { app.requests() >= 1 },
    )
    .await;
    let signalled = Instant::now();
    assert!(eu.proc.signal("TERM"));

    // The grace: health fails (admin and client listener), discovery hears
    // "draining", and new connections are still served.
    eventually(Duration::from_secs(2), "healthz 503 during the grace", || async {
        matches!(c.http.get(format!("{}/healthz", eu.admin)).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    let r = c
        .http
        .get(format!("{}/public/during-grace", eu.url))
        .send()
        .await;
    assert_eq!(
        r.expect("served during the grace").status(),
        200,
        "a new connection during the grace is served"
    );
    let r = c
        .http
        .get(format!("{}/healthz", eu.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "shutting_down");
    let servers = format!("{}/v1/servers", c.discovery_url());
    eventually(
        Duration::from_secs(2),
        "discovery lists eu-1 draining",
        || async {
            let v: serde_json::Value = c
                .http
                .get(&servers)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["id"] == "eu-1" && s["draining"] == true))
        },
    )
    .await;

    // After the grace the listener closes; the request in flight finishes.
    eventually(
        Duration::from_secs(6),
        "listener closed after the grace",
        || async { refused(eu.addr).await },
    )
    .await;
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the listener closed before the grace ended"
    );
    let r = slow
        .await
        .unwrap()
        .expect("the request in flight got its answer");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/public/slow");

    // No connection left: the process exits well before the timeout.
    let status = eu
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits after its requests finished");
    assert!(status.success(), "exit status {status:?}");
}

/// One load client: keep-alive requests in a loop until `stop`. A request
/// that fails without an answer (a keep-alive connection the old process
/// closed) is retried once on a fresh connection; only a failure of that
/// retry, or a non-200 answer, counts as a failure.
async fn load_client(
    url: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    while !stop.load(Ordering::SeqCst) {
        let outcome = match http.get(&url).send().await {
            Ok(r) => Ok(r.status()),
            Err(_) => {
                retried.fetch_add(1, Ordering::SeqCst);
                fresh.get(&url).send().await.map(|r| r.status())
            }
        };
        match outcome {
            Ok(s) if s == 200 => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(s) => failed.lock().unwrap().push(format!("status {s}")),
            Err(e) => failed.lock().unwrap().push(format!("{e:#}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_over_the_sockets_under_load() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("eu").await;
    let sock = c.path("upgrade.sock");
    let mut old = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .server_extra(&format!(
            "shutdown_grace_seconds = 1\nshutdown_timeout_seconds = 10\nupgrade_socket = {:?}",
            sock.to_string_lossy()
        ))
        .start()
        .await;

    // Bounded load: 4 keep-alive clients until `stop`, each request 10 ms
    // at the upstream.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = format!("{}/public/load?delay_ms=10", old.url);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load_client(
                url.clone(),
                stop.clone(),
                ok.clone(),
                retried.clone(),
                failed.clone(),
            ))
        })
        .collect();
    eventually(Duration::from_secs(5), "load running", || async {
        ok.load(Ordering::SeqCst) >= 20
    })
    .await;

    // The new process waits on the upgrade socket; then SIGQUIT the old.
    let spawn = Spawn::new("proxy eu-1 (new)", &c.bin)
        .args(["proxy", "--upgrade", "--config"])
        .arg(&old.config)
        .env("TETHER_LOG", "info")
        .log(&c.path("proxy.eu-1.new.log"))
        .ready("listening on")
        .ready_within(Duration::from_secs(20));
    let new = tokio::task::spawn_blocking(move || spawn.start());
    eventually(
        Duration::from_secs(10),
        "new process on the upgrade socket",
        || async { sock.exists() },
    )
    .await;
    let before = ok.load(Ordering::SeqCst);
    assert!(old.proc.signal("QUIT"));
    let mut new = new
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("new process: {e}"))
        .proc;

    // The old process ends (5 s of Pingora's handover overlap, then its
    // connections drain); the new one keeps serving the same port.
    let status = tokio::task::spawn_blocking(move || {
        let s = old.proc.wait_exit(Duration::from_secs(30));
        (s, old)
    })
    .await
    .unwrap();
    let (status, old) = status;
    let status = status.expect("the old process exits after the handover");
    assert!(status.success(), "old exit status {status:?}");
    let at_old_exit = ok.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(5),
        "load served by the new process",
        || async { ok.load(Ordering::SeqCst) >= at_old_exit + 50 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.unwrap();
    }
    assert!(new.is_running(), "the new process is serving");
    let r = c
        .http
        .get(format!("{}/healthz", old.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the admin listener was handed over too");
    let failed = failed.lock().unwrap().clone();
    eprintln!(
        "upgrade under load: {} ok ({} before SIGQUIT, {} at the old exit), {} retried on a fresh connection, {} failed",
        ok.load(Ordering::SeqCst),
        before,
        at_old_exit,
        retried.load(Ordering::SeqCst),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
}

fn sdk_client(global: &str) -> tether_client::Client {
    tether_client::Client::builder()
        .global_url(global)
        .reconnect_wait(Duration::from_millis(300))
        .max_reconnect_attempts(5)
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `tether drain|undrain …` against the cluster's discovery.
fn tether(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(TETHER);
    cmd.args(args)
        .env_remove("TETHER_ADMIN_TOKEN")
        .env_remove("TETHER_DISCOVERY_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tether")
}

async fn locked_clients(p: &Proxy, http: &reqwest::Client) -> Option<f64> {
    metric(&p.metrics(http).await, "tether_proxy_locked_clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_keeps_critical_tasks_and_can_be_undone() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app1 = Upstream::start("eu-1").await;
    let app2 = Upstream::start("eu-2").await;
    let eu1 = c.proxy("eu-1", "eu").upstream(&app1).start().await;
    eu1.wait_sees(&c.http, &["eu-1"]).await;

    // Four clients log in while eu-1 is alone: all locked there.
    let clients: Vec<_> = (0..4).map(|_| sdk_client(&eu1.url)).collect();
    for (i, cl) in clients.iter().enumerate() {
        let login = cl
            .login(&json!({"username": format!("user-{i}"), "password": "x"}))
            .await
            .unwrap();
        assert_eq!(login.server.id, "eu-1");
        let r = cl.get("/work").await.unwrap();
        assert_eq!(r.status, 200);
    }
    eventually(
        Duration::from_secs(5),
        "4 clients locked to eu-1",
        || async { locked_clients(&eu1, &c.http).await == Some(4.0) },
    )
    .await;

    let eu2 = c.proxy("eu-2", "eu").upstream(&app2).start().await;
    eu1.wait_sees(&c.http, &["eu-1", "eu-2"]).await;

    // Client 0 is in a critical task when the drain comes.
    let task = clients[0].critical_task();

    // Errors are clear: no token, a wrong token, an unknown server.
    let disc = c.discovery_url();
    let out = tether(&["drain", "eu-1", "--discovery", &disc], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no admin token"),
        "{out:?}"
    );
    let out = tether(
        &["drain", "eu-1"],
        &[
            ("TETHER_DISCOVERY_URL", &disc),
            ("TETHER_ADMIN_TOKEN", "wrong"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the admin token"),
        "{out:?}"
    );
    let token_file = c.path("admin.token");
    let token_file = token_file.to_str().unwrap();
    let out = tether(
        &[
            "drain",
            "nope-9",
            "--discovery",
            &disc,
            "--admin-token-file",
            token_file,
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no live server"),
        "{out:?}"
    );

    // The drain.
    let out = tether(
        &[
            "drain",
            "eu-1",
            "--discovery",
            &disc,
            "--admin-token-file",
            token_file,
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let draining = |p: &Proxy, want: bool| {
        let p = p.admin.clone();
        let http = c.http.clone();
        async move {
            let v: serde_json::Value = http
                .get(format!("{p}/registry"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["id"] == "eu-1" && s["draining"] == want))
        }
    };
    eventually(Duration::from_secs(5), "eu-1 sees itself draining", || {
        draining(&eu1, true)
    })
    .await;

    // A new login at eu-1 is placed on eu-2.
    let newcomer = sdk_client(&eu1.url);
    let login = newcomer
        .login(&json!({"username": "newcomer", "password": "x"}))
        .await
        .unwrap();
    assert_eq!(
        login.server.id, "eu-2",
        "a login is not placed on a draining server"
    );

    // At their next refresh: the critical client stays, the others move.
    let r = clients[0].refresh().await.unwrap();
    assert_eq!(
        (r.server.id.as_str(), r.reason.as_str()),
        ("eu-1", "critical_task")
    );
    for cl in &clients[1..] {
        let r = cl.refresh().await.unwrap();
        assert_eq!(r.server.id, "eu-2", "reason {}", r.reason);
        let body: serde_json::Value = cl.get("/after").await.unwrap().json().unwrap();
        assert_eq!(body["server"], "eu-2");
    }
    let body: serde_json::Value = clients[0].get("/still").await.unwrap().json().unwrap();
    assert_eq!(body["server"], "eu-1", "a critical task keeps its server");
    eventually(
        Duration::from_secs(5),
        "1 client still locked to eu-1",
        || async { locked_clients(&eu1, &c.http).await == Some(1.0) },
    )
    .await;

    // The task ends; the next refresh moves that client too: eu-1 is empty.
    drop(task);
    let r = clients[0].refresh().await.unwrap();
    assert_eq!(r.server.id, "eu-2", "reason {}", r.reason);
    eventually(
        Duration::from_secs(5),
        "no client locked to eu-1",
        || async { locked_clients(&eu1, &c.http).await == Some(0.0) },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the moved clients count at eu-2",
        || async { locked_clients(&eu2, &c.http).await >= Some(3.0) },
    )
    .await;

    // Undrain: discovery clears it and eu-1's heartbeats do not set it
    // again.
    let out = tether(
        &[
            "undrain",
            "eu-1",
            "--discovery",
            &disc,
            "--admin-token-file",
            token_file,
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer draining"));
    eventually(
        Duration::from_secs(5),
        "eu-1 sees itself not draining",
        || draining(&eu1, false),
    )
    .await;
    // Ten heartbeat intervals later it is still not draining.
    let until = Instant::now() + Duration::from_millis(10 * c.timing.heartbeat_ms);
    while Instant::now() < until {
        let v: serde_json::Value = c
            .http
            .get(format!("{disc}/v1/servers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let eu1_entry = v["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == "eu-1").cloned())
            .expect("eu-1 listed");
        assert_eq!(
            eu1_entry["draining"], false,
            "heartbeats re-asserted the drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(eu2);
}
