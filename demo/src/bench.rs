//! `tether bench`: a lock-protocol load tool for real deployments.
//!
//! N simulated clients, each a Rust SDK [`Client`], log in through the
//! global URL and run the sample app's three-step workflow (create an
//! order, add an item, check out) as critical tasks, refreshing
//! (`/closestToMe` + `/auth/refresh`) between workflows and following
//! relocks. It reports throughput, latency percentiles per endpoint,
//! workflow failures by cause and lock changes by reason.
//!
//! Out of the box it runs against `tether demo --serve` (the sample app's
//! users `user-0000`… with password `demo`). Against another deployment the
//! app behind tether must accept the same login body and serve the same
//! workflow paths (`POST /orders`, `/orders/{id}/items`,
//! `/orders/{id}/checkout`), as the sample app does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tether_client::{Client, Event, Method, Routing};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub global_url: String,
    pub clients: usize,
    pub duration: Duration,
    pub routing: Routing,
    pub user_prefix: String,
    pub password: String,
    /// Pause between steps (think time).
    pub think: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub seconds: f64,
    pub clients: usize,
    pub requests: u64,
    pub requests_per_second: f64,
    pub workflows_completed: u64,
    pub workflows_failed: u64,
    pub workflows_per_second: f64,
    pub failures: BTreeMap<String, u64>,
    pub relocks: BTreeMap<String, u64>,
    pub relock_hints: u64,
    pub endpoints: BTreeMap<String, EndpointStats>,
}

#[derive(Default)]
struct Shared {
    latencies: Mutex<BTreeMap<&'static str, (Vec<u32>, u64)>>,
    completed: AtomicU64,
    failed: AtomicU64,
    requests: AtomicU64,
    hints: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    relocks: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn record(&self, endpoint: &'static str, took: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut m = lock(&self.latencies);
        let e = m.entry(endpoint).or_default();
        e.0.push(took.as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            e.1 += 1;
        }
    }

    fn fail(&self, cause: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.failures).entry(cause).or_insert(0) += 1;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the load and returns the report; a progress bar goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, crate::DemoError> {
    if opts.clients == 0 || opts.clients > 10_000 {
        return Err(crate::DemoError::Options(format!(
            "--clients {}: must be between 1 and 10000",
            opts.clients
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &BenchOptions) -> Result<BenchReport, crate::DemoError> {
    let shared = Arc::new(Shared::default());
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| crate::DemoError::Options(format!("HTTP client: {e}")))?;
    let started = Instant::now();
    let deadline = started + opts.duration;

    let bar = {
        let shared = shared.clone();
        let length = opts.duration;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let done = (started.elapsed().as_secs_f64() / length.as_secs_f64()).min(1.0);
                let n = (done * 30.0) as usize;
                eprint!(
                    "\r  [{}{}] {:>3.0}%  requests {:>7}  workflows {:>6}  failed {:>4}   ",
                    "#".repeat(n),
                    "-".repeat(30 - n),
                    done * 100.0,
                    shared.requests.load(Ordering::Relaxed),
                    shared.completed.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed)
                );
            }
        })
    };

    let mut tasks = Vec::new();
    for i in 0..opts.clients {
        let (shared, http, opts) = (shared.clone(), http.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let client = match Client::builder()
                .global_url(opts.global_url.clone())
                .routing(opts.routing)
                .http_client(http)
                .reconnect_wait(Duration::from_secs(1))
                .request_timeout(Duration::from_secs(10))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    shared.fail(format!("client setup: {e}"));
                    return;
                }
            };
            let counter = tokio::spawn(count_events(client.events(), shared.clone()));
            let user = format!("{}{i:04}", opts.user_prefix);
            let t = Instant::now();
            let login = client
                .login(&json!({"username": user, "password": opts.password}))
                .await;
            shared.record("login", t.elapsed(), login.is_ok());
            if let Err(e) = login {
                shared.fail(format!("login: {e}"));
                counter.abort();
                return;
            }
            'work: while Instant::now() < deadline {
                let t = Instant::now();
                let r = client.refresh().await;
                shared.record("refresh", t.elapsed(), r.is_ok());
                if let Err(e) = r {
                    shared.fail(format!("refresh: {e}"));
                    continue;
                }
                let _critical = client.critical_task();
                let mut order = String::new();
                for (step, name) in ["create", "add_item", "checkout"].into_iter().enumerate() {
                    let (path, body) = match step {
                        0 => ("/orders".to_owned(), json!({"userId": user})),
                        1 => (
                            format!("/orders/{order}/items"),
                            json!({"sku": "bench", "qty": 1}),
                        ),
                        _ => (format!("/orders/{order}/checkout"), json!({})),
                    };
                    let t = Instant::now();
                    let r = client.request(Method::POST, &path, Some(&body)).await;
                    let ok = matches!(&r, Ok(resp) if resp.status.is_success());
                    shared.record(name, t.elapsed(), ok);
                    match r {
                        Ok(resp) if resp.status.is_success() => {
                            if step == 0 {
                                let v: serde_json::Value = resp.json().unwrap_or_default();
                                order = v["orderId"].as_str().unwrap_or_default().to_owned();
                            }
                        }
                        Ok(resp) => {
                            shared.fail(format!("{name} {}", resp.status.as_u16()));
                            continue 'work;
                        }
                        Err(e) => {
                            shared.fail(format!("{name}: {e}"));
                            continue 'work;
                        }
                    }
                    if !opts.think.is_zero() {
                        tokio::time::sleep(opts.think).await;
                    }
                }
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            counter.abort();
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!("a bench client task failed: {e}");
        }
    }
    bar.abort();
    eprintln!();
    let seconds = started.elapsed().as_secs_f64();
    let mut endpoints = BTreeMap::new();
    for (name, (mut lat, errors)) in std::mem::take(&mut *lock(&shared.latencies)) {
        lat.sort_unstable();
        endpoints.insert(
            name.to_owned(),
            EndpointStats {
                count: lat.len() as u64,
                errors,
                p50_ms: percentile(&lat, 0.50),
                p90_ms: percentile(&lat, 0.90),
                p99_ms: percentile(&lat, 0.99),
                max_ms: percentile(&lat, 1.0),
            },
        );
    }
    let requests = shared.requests.load(Ordering::Relaxed);
    let completed = shared.completed.load(Ordering::Relaxed);
    let failures = lock(&shared.failures).clone();
    let relocks = lock(&shared.relocks).clone();
    Ok(BenchReport {
        seconds,
        clients: opts.clients,
        requests,
        requests_per_second: requests as f64 / seconds,
        workflows_completed: completed,
        workflows_failed: shared.failed.load(Ordering::Relaxed),
        workflows_per_second: completed as f64 / seconds,
        failures,
        relocks,
        relock_hints: shared.hints.load(Ordering::Relaxed),
        endpoints,
    })
}

async fn count_events(mut events: tokio::sync::broadcast::Receiver<Event>, shared: Arc<Shared>) {
    loop {
        match events.recv().await {
            Ok(Event::ServerChanged { reason, .. }) => {
                *lock(&shared.relocks).entry(reason).or_insert(0) += 1
            }
            Ok(Event::Relocked { .. }) => {
                shared.hints.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The report as a table for people.
pub fn table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} clients, {:.1} s: {} requests ({:.0}/s), {} workflows completed ({:.1}/s), {} failed",
        r.clients,
        r.seconds,
        r.requests,
        r.requests_per_second,
        r.workflows_completed,
        r.workflows_per_second,
        r.workflows_failed
    );
    let _ = writeln!(
        out,
        "\n{:<10} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "endpoint", "count", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, e) in &r.endpoints {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, e.count, e.errors, e.p50_ms, e.p90_ms, e.p99_ms, e.max_ms
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\nworkflow failures: {}", join(&r.failures));
    }
    let _ = writeln!(
        out,
        "lock changes: {}; 421 relock hints followed: {}",
        if r.relocks.is_empty() {
            "none".to_owned()
        } else {
            join(&r.relocks)
        },
        r.relock_hints
    );
    out
}

fn join(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
