//! Operator basics and upstream failures, on real processes: a taken port
//! is one clear line and exit 1, a clean start counts no rejected
//! snapshot, a reused upstream connection the app dropped is retried on a
//! fresh one, and upstream failures get honest statuses (502, 504).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `tether <args>` to its end (at most `within`): exit code, stdout
/// and stderr.
fn run_to_end(args: &[&std::ffi::OsStr], within: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(TETHER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether");
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tether {args:?} still running after {within:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_taken(what: &str, (code, stdout, stderr): (Option<i32>, String, String), addr: &str) {
    assert_eq!(code, Some(1), "{what}: exit code; stderr: {stderr}");
    assert!(
        !stdout.contains("listening"),
        "{what}: announced before binding: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {stderr:?}");
    let line = lines[0];
    assert!(
        line.contains(&format!("cannot listen on {addr}")),
        "{what}: {line}"
    );
    // The cause once, not twice.
    assert_eq!(
        line.matches("in use").count(),
        1,
        "{what}: the cause appears once: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_one_line_and_exit_1() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let taken_addr = format!("127.0.0.1:{port}");
    let app = Upstream::start("app").await;

    // The client listener.
    let config = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .write_config(port, free_port());
    let got = run_to_end(
        &["proxy".as_ref(), "--config".as_ref(), config.as_os_str()],
        Duration::from_secs(10),
    );
    assert_taken("proxy listen", got, &taken_addr);

    // The admin listener.
    let config = c
        .proxy("eu-2", "eu")
        .upstream(&app)
        .write_config(free_port(), port);
    let got = run_to_end(
        &["proxy".as_ref(), "--config".as_ref(), config.as_os_str()],
        Duration::from_secs(10),
    );
    assert_taken("proxy admin_listen", got, &taken_addr);

    // Discovery.
    let path = c
        .discovery_conf(port)
        .write(&c.path("discovery.taken.toml"))
        .expect("write");
    let got = run_to_end(
        &["discovery".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(10),
    );
    assert_taken("discovery", got, &taken_addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_rejects_no_snapshot() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    // Discovery has heard from the proxy and the proxy has the snapshot
    // (its own entry from discovery, version > 0).
    eventually(
        Duration::from_secs(10),
        "snapshot from discovery",
        || async {
            let m = a.metrics(&c.http).await;
            metric(&m, "tether_proxy_registry_version").is_some_and(|v| v > 0.0)
        },
    )
    .await;
    let m = a.metrics(&c.http).await;
    let rejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("tether_proxy_snapshots_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 0.0, "no snapshot rejected on a clean start:\n{m}");
    let log = a.proc.log_text();
    assert!(
        !log.contains("implausible"),
        "a clean start warns about an implausible snapshot:\n{log}"
    );
}

/// Sends `n` sequential POSTs with a body to a public path; returns the
/// statuses that were not 200.
async fn post_n(http: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut bad = Vec::new();
    for i in 0..n {
        let r = http
            .post(format!("{url}/public/orders"))
            .body(format!("{{\"item\":{i}}}"))
            .send()
            .await
            .expect("send");
        if r.status() != 200 {
            bad.push(r.status().as_u16());
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_the_app_dropped_is_retried_on_a_fresh_one() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = FlakyUpstream::start(Flaw::DropOnReuse).await;
    let a = c.proxy("eu-1", "eu").upstream_addr(app.addr).start().await;
    let bad = post_n(&c.http, &a.url, 30).await;
    assert!(bad.is_empty(), "statuses other than 200: {bad:?}");
    assert_eq!(app.answered(), 30);
    // The race did happen, and was absorbed.
    assert!(app.dropped() > 0, "no pooled connection was reused");
    let m = a.metrics(&c.http).await;
    let retries = metric(&m, "tether_proxy_upstream_retries_total").unwrap_or(0.0);
    assert!(retries >= app.dropped() as f64, "retries {retries}\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_is_504_and_a_cut_answer_502() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let hang = FlakyUpstream::start(Flaw::Hang).await;
    let cut = FlakyUpstream::start(Flaw::CutHead).await;
    let a = c.proxy("eu-1", "eu").upstream_addr(hang.addr).start().await;
    let b = c.proxy("eu-2", "eu").upstream_addr(cut.addr).start().await;

    let r = c
        .http
        .post(format!("{}/public/orders", a.url))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "upstream_timeout");

    let r = c
        .http
        .get(format!("{}/public/x", b.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "bad_gateway");
    // A fresh connection that answers badly is not retried.
    assert_eq!(cut.dropped(), 1);

    let m = a.metrics(&c.http).await;
    assert_eq!(
        metric(
            &m,
            "tether_proxy_requests_total{outcome=\"upstream_timeout\""
        ),
        Some(1.0)
    );
    let m = b.metrics(&c.http).await;
    assert_eq!(
        metric(&m, "tether_proxy_requests_total{outcome=\"upstream_error\""),
        Some(1.0)
    );
}

/// Every known label value of the labelled counters exists from the start
/// at 0 (so `increase()` sees the first event), beside `tether_build_info`
/// and the standard `process_*` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_series_exist_at_zero_from_the_start() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let m = a.metrics(&c.http).await;
    for series in [
        "tether_proxy_logins_total{outcome=\"ok\"",
        "tether_proxy_logins_total{outcome=\"rejected\"",
        "tether_proxy_refresh_rejected_total{cause=\"reused\"",
        "tether_proxy_refresh_rejected_total{cause=\"no_server\"",
        "tether_proxy_failover_probes_total{result=\"alive\"",
        "tether_proxy_failover_probes_total{result=\"dead\"",
        "tether_proxy_keyring_reloads_total{result=\"reloaded\"",
        "tether_proxy_keyring_reloads_total{result=\"failed\"",
        "tether_proxy_snapshots_rejected_total{reason=\"empty\"",
        "tether_proxy_requests_total{outcome=\"upstream_timeout\"",
        "tether_proxy_upstream_retries_total",
    ] {
        assert_eq!(metric(&m, series), Some(0.0), "{series} at 0:\n{m}");
    }
    assert_eq!(
        metric(&m, "tether_build_info{component=\"proxy\""),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("\nprocess_cpu_seconds_total "), "{m}");
    assert!(
        m.contains("\ntether_proxy_registry_staleness_seconds{"),
        "{m}"
    );

    let d = c
        .http
        .get(format!("{}/metrics", c.discovery_url()))
        .send()
        .await
        .expect("discovery metrics")
        .text()
        .await
        .expect("text");
    for outcome in ["rotated", "grace", "revoked"] {
        let series = format!("tether_discovery_refresh_families_total{{outcome=\"{outcome}\"");
        assert_eq!(metric(&d, &series), Some(0.0), "{series} at 0:\n{d}");
    }
    assert_eq!(
        metric(&d, "tether_build_info{component=\"discovery\""),
        Some(1.0),
        "{d}"
    );
    assert!(d.contains("\nprocess_resident_memory_bytes "), "{d}");
}

/// With `[log] access = "on"` and `format = "json"`, each request is one
/// JSON line of target `tether::access` with its fields, the subject
/// hashed, and never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_and_never_the_token() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c
        .proxy("eu-1", "eu")
        .upstream(&app)
        .section("log", "access = \"on\"\nformat = \"json\"")
        .start()
        .await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let r = get(
        &c.http,
        &format!("{}/orders/1?secret=q", a.url),
        Some(&l.access),
    )
    .await;
    assert_eq!(r.status(), 200);
    let access_lines = || -> Vec<serde_json::Value> {
        a.proc
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "tether::access")
            .collect()
    };
    eventually(Duration::from_secs(5), "the access line", || async {
        access_lines()
            .iter()
            .any(|v| v["fields"]["path"] == "/orders/1")
    })
    .await;
    let lines = access_lines();
    let line = lines
        .iter()
        .find(|v| v["fields"]["path"] == "/orders/1")
        .expect("line");
    let f = &line["fields"];
    assert_eq!(f["method"], "GET", "{line}");
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["outcome"], "forwarded", "{line}");
    assert_eq!(f["client"], "127.0.0.1", "{line}");
    assert_eq!(f["server"], "eu-1", "{line}");
    assert!(f["upstream_ms"].as_f64().is_some(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
    let subject = f["subject"].as_str().expect("subject");
    assert_eq!(subject.len(), 16, "{line}");
    assert_ne!(subject, "alice");
    // The login is logged too, as a reserved endpoint.
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["path"] == "/auth/login" && v["fields"]["outcome"] == "reserved"),
        "{lines:?}"
    );
    let log = a.proc.log_text();
    assert!(!log.contains(&l.access), "the access token is in the log");
    assert!(!log.contains(&l.refresh), "the refresh token is in the log");
    assert!(!log.contains("secret=q"), "the query is in the log");
}

/// `upstream.addresses` may name a host: resolved off the request path,
/// the pool serves its addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_named_by_host_is_resolved_and_served() {
    let mut c = Cluster::new(Timing::default());
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c
        .proxy("eu-1", "eu")
        .section(
            "upstream",
            &format!(
                "addresses = [\"localhost:{}\"]\nresolve_interval_ms = 200",
                app.addr.port()
            ),
        )
        .start()
        .await;
    for _ in 0..5 {
        let r = get(&c.http, &format!("{}/public/x", a.url), None).await;
        assert_eq!(r.status(), 200);
    }
    assert!(app.requests() >= 5);
    let m = a.metrics(&c.http).await;
    let n = metric(&m, "tether_proxy_upstream_addresses").expect("upstream_addresses");
    assert!(n >= 1.0, "{m}");
    assert_eq!(
        metric(&m, "tether_proxy_upstream_resolve_failures_total"),
        Some(0.0)
    );
}
