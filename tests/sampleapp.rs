//! The sample app, in-process and as `tether sample-app`: real listeners on
//! 127.0.0.1 with ephemeral ports.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tether_sampleapp::{ClusterConfig, SampleCluster};
use tether_testkit::SampleApp;

/// Starts `tether sample-app` and returns it with region → URL from its
/// ready lines.
fn spawn_app(args: &[&str], regions: usize) -> (SampleApp, BTreeMap<String, String>) {
    let app = SampleApp::start(args, regions);
    for url in app.urls.values() {
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    }
    let urls = app.urls.clone();
    (app, urls)
}

async fn post(url: &str, body: Value) -> (StatusCode, String, Value) {
    let res = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let region = res.headers()["x-app-region"].to_str().unwrap().to_owned();
    (status, region, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn binary_prints_ready_lines_and_serves() {
    let (_app, urls) = spawn_app(
        &[
            "--regions",
            "eu,us",
            "--base-port",
            "0",
            "--lag-ms",
            "100",
            "--jitter-ms",
            "0",
        ],
        2,
    );
    assert_eq!(urls.keys().collect::<Vec<_>>(), ["eu", "us"]);
    let (eu, us) = (&urls["eu"], &urls["us"]);
    assert_ne!(eu, us);

    let health: Value = reqwest::get(format!("{us}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status":"ok","region":"us"}));
    let (s, r, b) = post(
        &format!("{eu}/login"),
        json!({"username":"alice","password":"demo"}),
    )
    .await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "eu"));
    assert_eq!(b, json!({"userId":"alice","homeRegion":"eu"}));

    // Create in eu, add in us at once: us has not seen the order yet.
    let (s, _, o) = post(&format!("{eu}/orders"), json!({"userId":"alice"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = o["orderId"].as_str().unwrap();
    let (s, r, _) = post(
        &format!("{us}/orders/{id}/items"),
        json!({"sku":"a","qty":1}),
    )
    .await;
    assert_eq!((s, r.as_str()), (StatusCode::NOT_FOUND, "us"));
    // After the lag it works (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _, _) = post(
            &format!("{us}/orders/{id}/items"),
            json!({"sku":"a","qty":1}),
        )
        .await;
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(Instant::now() < deadline, "order never replicated to us");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn binary_rejects_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["sample-app", "--regions", "eu,eu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--regions"), "{err}");
}

#[tokio::test]
async fn three_regions_in_process_workflow_and_lag() {
    let config = ClusterConfig::new(["eu", "us", "ap"])
        .with_lag(Duration::from_millis(200), Duration::from_millis(50));
    let c = SampleCluster::start(config).await.unwrap();
    let url = |r: &str| c.url(r).unwrap().to_owned();

    // Entirely in one region: succeeds.
    let (_, _, o) = post(
        &format!("{}/orders", url("ap")),
        json!({"userId":"user-0003"}),
    )
    .await;
    let id = o["orderId"].as_str().unwrap().to_owned();
    assert_eq!(
        post(
            &format!("{}/orders/{id}/items", url("ap")),
            json!({"sku":"x","qty":3})
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        post(&format!("{}/orders/{id}/checkout", url("ap")), json!({}))
            .await
            .0,
        StatusCode::OK
    );

    // Jumping regions between steps: fails like geo routing alone does.
    let (_, _, o) = post(&format!("{}/orders", url("eu")), json!({"userId":"alice"})).await;
    let id = o["orderId"].as_str().unwrap().to_owned();
    let (s, _, b) = post(
        &format!("{}/orders/{id}/items", url("us")),
        json!({"sku":"x","qty":1}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("order_not_found"))
    );

    assert!(c.wait_replicated(Duration::from_secs(5)).await);
    for r in ["eu", "us", "ap"] {
        let s = c.stats(r).unwrap();
        assert_eq!(s.orders, 2, "{r}");
        assert_eq!(s.pending_replication, 0, "{r}");
    }
    // Health toggle on one region only.
    c.set_healthy("us", false);
    assert_eq!(
        reqwest::get(format!("{}/health", url("us")))
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        reqwest::get(format!("{}/health", url("eu")))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    c.set_healthy("us", true);
    assert_eq!(
        reqwest::get(format!("{}/health", url("us")))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    c.shutdown().await;
}

#[cfg(unix)]
#[test]
fn binary_stops_cleanly_on_sigterm() {
    let (mut app, _urls) = spawn_app(&["--regions", "eu"], 1);
    let pid = app.proc.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = app.proc.try_status() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
