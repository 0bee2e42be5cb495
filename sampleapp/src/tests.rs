//! Tests against real listeners on 127.0.0.1 with ephemeral ports.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{ClusterConfig, Error, SampleCluster};

async fn cluster(lag_ms: u64) -> SampleCluster {
    let config = ClusterConfig::new(["eu", "us"])
        .with_lag(Duration::from_millis(lag_ms), Duration::from_millis(0));
    SampleCluster::start(config).await.unwrap()
}

async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let region = res
        .headers()
        .get("x-app-region")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, region, body)
}

async fn post(
    c: &SampleCluster,
    region: &str,
    path: &str,
    body: Value,
) -> (StatusCode, String, Value) {
    call(
        reqwest::Method::POST,
        format!("{}{path}", c.url(region).unwrap()),
        Some(body),
    )
    .await
}

async fn get(c: &SampleCluster, region: &str, path: &str) -> (StatusCode, String, Value) {
    call(
        reqwest::Method::GET,
        format!("{}{path}", c.url(region).unwrap()),
        None,
    )
    .await
}

#[tokio::test]
async fn login_ok_bad_and_malformed() {
    let c = cluster(100).await;
    let (s, r, b) = post(
        &c,
        "us",
        "/login",
        json!({"username":"user-0002","password":"demo"}),
    )
    .await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "us"));
    assert_eq!(b, json!({"userId":"user-0002","homeRegion":"us"}));
    let (_, _, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username":"user-0000","password":"demo"}),
    )
    .await;
    assert_eq!(b, json!({"userId":"user-0000","homeRegion":null}));
    let (_, _, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username":"bob","password":"demo"}),
    )
    .await;
    assert_eq!(b["homeRegion"], "us");

    let (s, r, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username":"alice","password":"nope"}),
    )
    .await;
    assert_eq!((s, r.as_str()), (StatusCode::UNAUTHORIZED, "eu"));
    assert_eq!(b, json!({"error":"bad_credentials"}));
    let (s, _, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username":"nobody","password":"demo"}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_credentials"))
    );

    let (s, _, b) = post(&c, "eu", "/login", json!({"username":"alice"})).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("password"))
    );
    let (s, _, b) = post(&c, "eu", "/login", json!({"username":7,"password":"demo"})).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("username"))
    );
    let (s, _, b) = post(&c, "eu", "/login", json!([1])).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("body"))
    );
    let res = reqwest::Client::new()
        .post(format!("{}/login", c.url("eu").unwrap()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "body");
}

#[tokio::test]
async fn workflow_in_one_region() {
    let c = cluster(10_000).await;
    let (s, _, o) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(o["version"], 1);
    let id = o["orderId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("eu-"), "{id}");
    let (s, _, b) = post(&c, "eu", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("order_incomplete"))
    );
    let (s, _, o) = post(
        &c,
        "eu",
        &format!("/orders/{id}/items"),
        json!({"sku":"book","qty":2}),
    )
    .await;
    assert_eq!((s, o["version"].as_u64()), (StatusCode::OK, Some(2)));
    let (s, _, o) = post(&c, "eu", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(
        (s, o["status"].as_str()),
        (StatusCode::OK, Some("checked_out"))
    );
    let (s, _, b) = post(
        &c,
        "eu",
        &format!("/orders/{id}/items"),
        json!({"sku":"pen","qty":1}),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("order_checked_out"))
    );
    let (s, _, b) = post(&c, "eu", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("order_checked_out"))
    );
    let (s, _, o) = get(&c, "eu", &format!("/orders/{id}")).await;
    assert_eq!(
        (s, o["items"].clone()),
        (StatusCode::OK, json!([{"sku":"book","qty":2}]))
    );
    // The other region has not seen any of it (lag 10 s).
    let (s, r, _) = get(&c, "us", &format!("/orders/{id}")).await;
    assert_eq!((s, r.as_str()), (StatusCode::NOT_FOUND, "us"));
    assert_eq!(c.stats("us").unwrap().pending_replication, 3);
}

#[tokio::test]
async fn order_ids_are_unique_across_regions() {
    let c = cluster(10_000).await;
    let (_, _, a) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    let (_, _, b) = post(&c, "us", "/orders", json!({"userId":"alice"})).await;
    assert_ne!(a["orderId"], b["orderId"]);
}

#[tokio::test]
async fn cross_region_step_fails_until_replicated() {
    let c = cluster(200).await;
    let (_, _, o) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    let id = o["orderId"].as_str().unwrap().to_owned();
    let items = format!("/orders/{id}/items");
    let (s, r, b) = post(&c, "us", &items, json!({"sku":"a","qty":1})).await;
    assert_eq!((s, r.as_str()), (StatusCode::NOT_FOUND, "us"));
    assert_eq!(b["error"], "order_not_found");
    let (s, _, _) = post(&c, "us", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    assert!(c.wait_replicated(Duration::from_secs(5)).await);
    let (s, _, o) = post(&c, "us", &items, json!({"sku":"a","qty":1})).await;
    assert_eq!(
        (s, o["version"].as_u64(), o["writtenIn"].as_str()),
        (StatusCode::OK, Some(2), Some("us"))
    );
    // Straight away, eu has the order but not the item: checkout there fails.
    let (s, _, b) = post(&c, "eu", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("order_incomplete"))
    );
    assert!(c.wait_replicated(Duration::from_secs(5)).await);
    let (s, _, _) = post(&c, "eu", &format!("/orders/{id}/checkout"), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, stats) = get(&c, "us", "/stats").await;
    assert_eq!(stats["region"], "us");
    assert_eq!(stats["orders"], 1);
    assert_eq!(stats["appliedEvents"], 1);
    assert_eq!(stats["staleEvents"], 0);
}

#[tokio::test]
async fn stale_event_delivered_late_is_counted() {
    let c = cluster(10_000).await;
    let (_, _, o) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    let id = o["orderId"].as_str().unwrap().to_owned();
    post(
        &c,
        "eu",
        &format!("/orders/{id}/items"),
        json!({"sku":"a","qty":1}),
    )
    .await;
    let eu = c.store("eu").unwrap();
    let us = c.store("us").unwrap();
    let v2 = eu.get(&id).unwrap();
    let mut v1 = v2.clone();
    v1.version = 1;
    v1.items.clear();
    use crate::store::{Applied, Event};
    assert_eq!(us.apply(&Event { order: v2.clone() }), Applied::Applied);
    assert_eq!(us.apply(&Event { order: v1 }), Applied::Stale);
    let (_, _, stats) = get(&c, "us", "/stats").await;
    assert_eq!(
        (
            stats["appliedEvents"].as_u64(),
            stats["staleEvents"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, _, o) = get(&c, "us", &format!("/orders/{id}")).await;
    assert_eq!(o["version"], 2);
}

#[tokio::test]
async fn health_toggle() {
    let c = cluster(100).await;
    let (s, r, b) = get(&c, "eu", "/health").await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "eu"));
    assert_eq!(b, json!({"status":"ok","region":"eu"}));
    assert!(c.set_healthy("eu", false));
    assert!(!c.set_healthy("mars", false));
    let (s, _, _) = get(&c, "eu", "/health").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, r, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username":"alice","password":"demo"}),
    )
    .await;
    assert_eq!(
        (s, r.as_str(), b["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "eu", Some("unavailable"))
    );
    let (s, _, _) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // The other region is unaffected, and stats still answer.
    assert_eq!(get(&c, "us", "/health").await.0, StatusCode::OK);
    let (s, _, b) = get(&c, "eu", "/stats").await;
    assert_eq!((s, b["healthy"].as_bool()), (StatusCode::OK, Some(false)));
    c.set_healthy("eu", true);
    assert_eq!(get(&c, "eu", "/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_inputs_never_5xx() {
    let c = cluster(100).await;
    let big = "x".repeat(crate::api::BODY_LIMIT + 1);
    let (s, r, b) = post(
        &c,
        "eu",
        "/login",
        json!({"username": big, "password":"demo"}),
    )
    .await;
    assert_eq!(
        (s, r.as_str(), b["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "eu", Some("body_too_large"))
    );
    let (s, _, b) = post(&c, "eu", "/orders", json!({"userId":"mallory"})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_user"))
    );
    let (_, _, o) = post(&c, "eu", "/orders", json!({"userId":"alice"})).await;
    let items = format!("/orders/{}/items", o["orderId"].as_str().unwrap());
    for (body, field) in [
        (json!({"qty":1}), "sku"),
        (json!({"sku":"","qty":1}), "sku"),
        (json!({"sku":"a"}), "qty"),
        (json!({"sku":"a","qty":0}), "qty"),
        (json!({"sku":"a","qty":-1}), "qty"),
        (json!({"sku":"a","qty":1.5}), "qty"),
        (json!({"sku":"a","qty":100000}), "qty"),
    ] {
        let (s, _, b) = post(&c, "eu", &items, body.clone()).await;
        assert_eq!(
            (s, b["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{body}"
        );
    }
    let (s, r, b) = get(&c, "eu", "/nope").await;
    assert_eq!(
        (s, r.as_str(), b["error"].as_str()),
        (StatusCode::NOT_FOUND, "eu", Some("not_found"))
    );
    let (s, r, _) = call(
        reqwest::Method::DELETE,
        format!("{}/orders", c.url("eu").unwrap()),
        None,
    )
    .await;
    assert_eq!((s, r.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "eu"));
}

#[tokio::test]
async fn shutdown_closes_listeners() {
    let c = cluster(100).await;
    let url = c.url("eu").unwrap().to_owned();
    c.shutdown().await;
    assert!(reqwest::get(format!("{url}/health")).await.is_err());
}

#[test]
fn config_errors_name_the_flag() {
    let check = |c: ClusterConfig| match c.validate() {
        Err(Error::Config { key, .. }) => key,
        other => panic!("{other:?}"),
    };
    assert_eq!(check(ClusterConfig::new(Vec::<String>::new())), "--regions");
    assert_eq!(check(ClusterConfig::new(["eu", "eu"])), "--regions");
    assert_eq!(check(ClusterConfig::new(["eu", "a/b"])), "--regions");
    assert_eq!(check(ClusterConfig::new([""])), "--regions");
    let mut c = ClusterConfig::new(["eu", "us"]);
    c.base_port = 65535;
    assert_eq!(check(c), "--base-port");
    let mut c = ClusterConfig::new(["eu"]);
    c.users = crate::MAX_USERS + 1;
    assert_eq!(check(c), "--users");
    assert!(ClusterConfig::new(["eu", "us", "ap"]).validate().is_ok());
}
