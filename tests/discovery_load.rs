//! 1,000 simulated servers heartbeating concurrently: none lost, none
//! wrongly evicted. Bounded: ~3 s of heartbeats, at most `CONNECTIONS`
//! requests in flight over one shared client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tether_discovery::Config;
use tokio::sync::Semaphore;
use tokio::time::Instant;

const CLUSTER: &str = "load-cluster-token-0123456789";
const SERVERS: usize = 1000;
const INTERVAL: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(1);
const RUN_FOR: Duration = Duration::from_secs(3);
const CONNECTIONS: usize = 64;
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_servers_heartbeating_are_all_kept() {
    let mut config = Config::loopback(CLUSTER, "load-admin-token-0123456789");
    config.heartbeat_interval = INTERVAL;
    config.ttl = TTL;
    let running = tether_discovery::bind(config).await.unwrap();
    let base = running.url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let permits = Arc::new(Semaphore::new(CONNECTIONS));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let mut servers = Vec::with_capacity(SERVERS);
    for i in 0..SERVERS {
        let (http, permits, sent, url) = (
            http.clone(),
            permits.clone(),
            sent.clone(),
            format!("{base}/v1/heartbeat"),
        );
        servers.push(tokio::spawn(async move {
            let id = format!("srv-{i:04}");
            let body = json!({
                "id": id,
                "region": REGIONS[i % 3],
                "url": format!("http://127.0.0.1:{}", 20000 + i),
                "load": (i % 17) as f64,
                "healthy": true,
            })
            .to_string();
            // Spread the first heartbeats over one interval, as real proxies
            // started at different times would.
            let mut next = start + INTERVAL.mul_f64(i as f64 / SERVERS as f64);
            while next < start + RUN_FOR {
                tokio::time::sleep_until(next).await;
                let _permit = permits.acquire().await.unwrap();
                let r = http
                    .post(&url)
                    .bearer_auth(CLUSTER)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{id}");
                r.bytes().await.unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                next += INTERVAL;
            }
        }));
    }

    // Check at several points while the load runs (after the first round).
    let mut checks = 0;
    for at in [1200, 1900, 2600] {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let list: Value = http
            .get(format!("{base}/v1/servers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), SERVERS, "at {at} ms");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*id, format!("srv-{i:04}"));
        }
        let ages: Vec<u64> = list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["lastSeenMs"].as_u64().unwrap())
            .collect();
        let oldest = ages.iter().max().copied().unwrap_or(0);
        println!(
            "at {at} ms: {} servers listed, oldest heartbeat {oldest} ms ago",
            ids.len()
        );
        checks += 1;
    }
    for s in servers {
        s.await.unwrap();
    }
    let elapsed = start.elapsed();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "{sent} heartbeats in {elapsed:?} ({:.0}/s)",
        sent as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(checks, 3);
    // Every server sent about RUN_FOR / INTERVAL heartbeats.
    assert!(
        sent >= (SERVERS * 14) as u64,
        "only {sent} heartbeats went out"
    );

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    assert_eq!(value("tether_discovery_evictions_total"), 0.0);
    assert_eq!(value("tether_discovery_servers"), SERVERS as f64);
    assert_eq!(
        value("tether_discovery_heartbeats_total{outcome=\"accepted\"}"),
        sent as f64
    );
    let live: f64 = REGIONS
        .iter()
        .map(|r| value(&format!("tether_discovery_live_servers{{region=\"{r}\"}}")))
        .sum();
    assert_eq!(live, SERVERS as f64);
    running.stop().await.unwrap();
}
