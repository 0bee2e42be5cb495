//! The simulated clients and the three phases.
//!
//! A workflow is three steps, each reading the previous step's write:
//! create an order, add an item, check out. Between steps a client may
//! "jump" (its geo-DNS answer changes), as real clients on the move do.
//!
//! Counting rules (the same in every phase):
//! - **completed**: all three steps answered 2xx;
//! - **failed**: a step got a non-2xx answer from the app (the 404/409 a
//!   missing earlier write causes), or, in phase 1, no answer at all;
//! - **restarted** (tether phases only): the client's server changed under
//!   a running workflow (its server died, so the critical task could not
//!   keep it), or a step got no answer at all (the server died with the
//!   request in flight). The workflow is abandoned and started again from
//!   its first step, on the new server once the client has one; its
//!   earlier writes reach the new region by replication. Not a failure:
//!   nothing is lost and the user is told "Your primary server has
//!   changed…". Steps without an answer are also listed among the errors.
//!   A workflow is never silently dropped: each one ends in exactly one of
//!   the three counts (or is cut by the end of the phase, not counted).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use tether_client::{Client, Event, Routing};

use crate::geo::{self, GeoDns, Location};
use crate::DemoOptions;

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    pub name: String,
    /// Completed + failed.
    pub workflows: u64,
    pub completed: u64,
    pub failed: u64,
    pub restarted: u64,
    /// Failed workflows by cause, e.g. `add_item 404`.
    pub failure_causes: BTreeMap<String, u64>,
    /// Lock changes (refreshes that moved a client), by reason.
    pub relocks: BTreeMap<String, u64>,
    /// `421` relock hints the SDK followed (clients use the global URL, so
    /// a request that lands on another region's proxy gets one).
    pub relock_hints: u64,
    /// Step answers the proxy replayed from its Idempotency-Key store
    /// (`Idempotent-Replayed: true`): a step the SDK resent after the app
    /// had already applied it, answered without applying it again.
    pub replayed: u64,
    /// SDK calls outside workflows that failed (e.g. a refresh between
    /// workflows), by cause. Not counted as failed workflows.
    pub other_errors: BTreeMap<String, u64>,
    /// Phase 3: seconds from the kill to the last affected client working
    /// again (`null` when a client never recovered within the phase).
    pub recovery_seconds: Option<f64>,
    /// Phase 3: clients locked to the killed server at the kill.
    pub affected_clients: Option<u64>,
    /// Phase 3: affected clients that got a new server.
    pub clients_moved: Option<u64>,
    /// Tether phases: clients no longer signed in at the end of the phase
    /// (their refresh token was refused).
    pub signed_out: Option<u64>,
}

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    failed: AtomicU64,
    restarted: AtomicU64,
    causes: Mutex<BTreeMap<String, u64>>,
    relocks: Mutex<BTreeMap<String, u64>>,
    hints: AtomicU64,
    replayed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    let mut m = match map.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    *m.entry(key).or_insert(0) += 1;
}

impl Tally {
    fn fail(&self, cause: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        bump(&self.causes, cause);
    }

    fn report(&self, name: &str) -> PhaseReport {
        let completed = self.completed.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let take = |m: &Mutex<BTreeMap<String, u64>>| match m.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        };
        PhaseReport {
            name: name.to_owned(),
            workflows: completed + failed,
            completed,
            failed,
            restarted: self.restarted.load(Ordering::Relaxed),
            failure_causes: take(&self.causes),
            relocks: take(&self.relocks),
            relock_hints: self.hints.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            other_errors: take(&self.errors),
            ..PhaseReport::default()
        }
    }

    fn total(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

const STEPS: [&str; 3] = ["create", "add_item", "checkout"];

fn step_path(step: usize, order: &str) -> String {
    match step {
        0 => "/orders".to_owned(),
        1 => format!("/orders/{order}/items"),
        _ => format!("/orders/{order}/checkout"),
    }
}

fn step_body(step: usize, user: &str) -> serde_json::Value {
    match step {
        0 => json!({"userId": user}),
        1 => json!({"sku": "book", "qty": 1}),
        _ => json!({}),
    }
}

async fn think(rng: &mut rand::rngs::StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(40..120))).await;
}

fn user_of(i: usize) -> String {
    format!("user-{i:04}")
}

/// Progress: one line on stderr per second.
fn progress(
    label: String,
    started: Instant,
    length: Duration,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = (started.elapsed().as_secs_f64() / length.as_secs_f64()).min(1.0);
            let bar = (done * 20.0) as usize;
            eprintln!(
                "  {label:<34} [{}{}] {:>3.0}%  workflows {:>4}  failed {:>4}  restarted {:>3}",
                "#".repeat(bar),
                "-".repeat(20 - bar),
                done * 100.0,
                tally.total(),
                tally.failed.load(Ordering::Relaxed),
                tally.restarted.load(Ordering::Relaxed),
            );
        }
    })
}

/// What every phase starts with: geo DNS over its endpoints and its
/// health checks, the counters, the clock and the progress line.
struct Phase {
    geo: Arc<GeoDns>,
    checks: tokio::task::JoinHandle<()>,
    tally: Arc<Tally>,
    started: Instant,
    deadline: Instant,
    show: tokio::task::JoinHandle<()>,
}

impl Phase {
    fn start(
        opts: &DemoOptions,
        endpoints: Vec<String>,
        health_path: &'static str,
        name: &str,
    ) -> Phase {
        let geo = GeoDns::new(endpoints, health_path);
        let checks = geo.start_checks();
        let tally = Arc::new(Tally::default());
        let started = Instant::now();
        let show = progress(name.to_owned(), started, opts.phase, tally.clone());
        Phase {
            geo,
            checks,
            tally,
            started,
            deadline: started + opts.phase,
            show,
        }
    }
}

// ------------------------------------------------------------ phase 1

/// Phase 1: clients talk straight to the apps through geo DNS alone.
pub async fn direct(opts: &DemoOptions, apps: Vec<String>, name: &str) -> PhaseReport {
    let Phase {
        geo,
        checks,
        tally,
        deadline,
        show,
        ..
    } = Phase::start(opts, apps, "/health", name);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for i in 0..opts.clients {
        let (geo, tally, http) = (geo.clone(), tally.clone(), http.clone());
        let jump = opts.jump_probability;
        let seed = opts.seed.wrapping_add(i as u64);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let at = Location::new(i % geo.regions());
            let user = user_of(i);
            while Instant::now() < deadline {
                let mut order = String::new();
                let mut ok = true;
                for (step, step_name) in STEPS.iter().enumerate() {
                    if step > 0 {
                        think(&mut rng).await;
                        if rng.random_bool(jump) {
                            at.jump(geo.regions(), &mut rng);
                        }
                    }
                    let url = format!("{}{}", geo.resolve(at.get()), step_path(step, &order));
                    match http.post(&url).json(&step_body(step, &user)).send().await {
                        Ok(r) if r.status().is_success() => {
                            if step == 0 {
                                let v: serde_json::Value = r.json().await.unwrap_or_default();
                                order = v["orderId"].as_str().unwrap_or_default().to_owned();
                            }
                        }
                        Ok(r) => {
                            tally.fail(format!("{} {}", step_name, r.status().as_u16()));
                            ok = false;
                            break;
                        }
                        Err(_) => {
                            tally.fail(format!("{} no answer", step_name));
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    tally.completed.fetch_add(1, Ordering::Relaxed);
                }
                think(&mut rng).await;
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!("a demo client task failed: {e}");
        }
    }
    show.abort();
    checks.abort();
    tally.report(name)
}

// -------------------------------------------------------- phases 2 and 3

/// A region's proxy to kill during a tether phase.
pub struct Kill {
    pub at: Duration,
    pub server_id: String,
    pub proxy: tether_testkit::Proc,
}

struct Recovery {
    killed_at: Instant,
    server_id: String,
    /// Per affected client: when it first completed a step elsewhere.
    affected: Mutex<BTreeMap<usize, Option<Instant>>>,
}

/// Phases 2 and 3: the same clients through tether (the SDK), optionally
/// killing one region's proxy mid-run.
pub async fn through_tether(
    opts: &DemoOptions,
    proxies: Vec<String>,
    name: &str,
    kill: Option<Kill>,
) -> PhaseReport {
    let Phase {
        geo,
        checks,
        tally,
        started,
        deadline,
        show,
    } = Phase::start(opts, proxies, "/healthz", name);
    let http = reqwest::Client::builder()
        // Shorter than the request timeout, so a dead server shows up as
        // a connect error (which the SDK fails over from).
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_default();
    let clients: Arc<Mutex<Vec<Option<Client>>>> = Arc::new(Mutex::new(vec![None; opts.clients]));
    let recovery: Arc<Mutex<Option<Arc<Recovery>>>> = Arc::new(Mutex::new(None));

    let mut tasks = Vec::new();
    for i in 0..opts.clients {
        let (geo, tally, http, clients, recovery) = (
            geo.clone(),
            tally.clone(),
            http.clone(),
            clients.clone(),
            recovery.clone(),
        );
        let jump = opts.jump_probability;
        let seed = opts.seed.wrapping_add(1000 + i as u64);
        let reconnect_wait = opts.reconnect_wait;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let at = Location::new(i % geo.regions());
            let client = match Client::builder()
                .resolver(geo::resolver(geo.clone(), at.clone()))
                // The SDK's default: requests go to the locked server's URL;
                // the global (geo-DNS) URL serves login, closestToMe and
                // refresh. A request never lands on a proxy that merely
                // happens to be nearest, so a dying proxy only affects the
                // clients locked to it.
                .routing(Routing::Locked)
                .http_client(http)
                .request_timeout(Duration::from_secs(5))
                .reconnect_wait(reconnect_wait)
                .max_reconnect_attempts(20)
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    bump(&tally.errors, format!("client setup: {e}"));
                    return;
                }
            };
            let events = client.events();
            let relocks = tokio::spawn(count_relocks(events, tally.clone()));
            let user = user_of(i);
            if let Err(e) = client
                .login(&json!({"username": user, "password": "demo"}))
                .await
            {
                bump(&tally.errors, format!("login: {}", short(&e)));
                relocks.abort();
                return;
            }
            if let Ok(mut c) = clients.lock() {
                c[i] = Some(client.clone());
            }
            'workflows: while Instant::now() < deadline {
                // Between workflows, no critical task: the client may be
                // re-placed (closestToMe + refresh).
                if rng.random_bool(jump) {
                    at.jump(geo.regions(), &mut rng);
                }
                if let Err(e) = client.refresh().await {
                    // Not a workflow failure (no step ran), but reported.
                    bump(&tally.errors, format!("refresh: {}", short(&e)));
                    think(&mut rng).await;
                    continue;
                }
                let _critical = client.critical_task();
                let home = client.server().map(|s| s.id).unwrap_or_default();
                let mut order = String::new();
                for (step, step_name) in STEPS.iter().enumerate() {
                    if step > 0 {
                        think(&mut rng).await;
                        if rng.random_bool(jump) {
                            at.jump(geo.regions(), &mut rng);
                        }
                    }
                    if Instant::now() >= deadline {
                        break 'workflows;
                    }
                    let answer = client
                        .request(
                            tether_client::Method::POST,
                            &step_path(step, &order),
                            Some(&step_body(step, &user)),
                        )
                        .await;
                    if let Ok(r) = &answer {
                        if r.headers.contains_key(tether_client::idempotency::REPLAYED) {
                            tally.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let now_on = client.server().map(|s| s.id).unwrap_or_default();
                    let rec = recovery.lock().ok().and_then(|r| r.clone());
                    if let (Some(rec), Ok(r)) = (&rec, &answer) {
                        if r.status.is_success() && now_on != rec.server_id {
                            if let Ok(mut a) = rec.affected.lock() {
                                if let Some(slot @ None) = a.get_mut(&i) {
                                    *slot = Some(Instant::now());
                                }
                            }
                        }
                    }
                    if now_on != home {
                        // The server died under the workflow: start over
                        // on the new one.
                        tally.restarted.fetch_add(1, Ordering::Relaxed);
                        continue 'workflows;
                    }
                    match answer {
                        Ok(r) if r.status.is_success() => {
                            if step == 0 {
                                let v: serde_json::Value = r.json().unwrap_or_default();
                                order = v["orderId"].as_str().unwrap_or_default().to_owned();
                            }
                        }
                        Ok(r) => {
                            tally.fail(format!("{} {}", step_name, r.status.as_u16()));
                            continue 'workflows;
                        }
                        Err(e) => {
                            // No usable answer: the server died with the
                            // request in flight, or the SDK ran out of
                            // reconnect attempts. Nobody can say whether the
                            // step was applied, so, like a real app, the
                            // client asks for a fresh lock (the proxy probes
                            // the server) and runs the workflow again from
                            // its first step. Counted as restarted; the
                            // cause is listed with the errors.
                            if let Err(again) = client.refresh_unreachable().await {
                                bump(
                                    &tally.errors,
                                    format!("refresh after no answer: {}", short(&again)),
                                );
                            }
                            bump(
                                &tally.errors,
                                format!(
                                    "{step_name}: no answer ({}), workflow restarted",
                                    short(&e)
                                ),
                            );
                            tally.restarted.fetch_add(1, Ordering::Relaxed);
                            continue 'workflows;
                        }
                    }
                }
                tally.completed.fetch_add(1, Ordering::Relaxed);
            }
            relocks.abort();
        }));
    }

    let mut report_kill = None;
    if let Some(mut k) = kill {
        tokio::time::sleep_until((started + k.at).into()).await;
        let affected: BTreeMap<usize, Option<Instant>> = match clients.lock() {
            Ok(c) => c
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.as_ref()
                        .and_then(|c| c.server())
                        .is_some_and(|s| s.id == k.server_id)
                })
                .map(|(i, _)| (i, None))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        k.proxy.kill();
        let rec = Arc::new(Recovery {
            killed_at: Instant::now(),
            server_id: k.server_id.clone(),
            affected: Mutex::new(affected),
        });
        eprintln!(
            "  killed the {} proxy (pid gone) with {} clients locked to it",
            k.server_id,
            rec.affected.lock().map(|a| a.len()).unwrap_or(0)
        );
        if let Ok(mut r) = recovery.lock() {
            *r = Some(rec.clone());
        }
        report_kill = Some(rec);
    }

    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!("a demo client task failed: {e}");
        }
    }
    show.abort();
    checks.abort();
    let mut report = tally.report(name);
    report.signed_out = clients
        .lock()
        .ok()
        .map(|c| c.iter().flatten().filter(|c| !c.is_logged_in()).count() as u64);
    if let Some(rec) = report_kill {
        let affected = match rec.affected.lock() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let moved = match clients.lock() {
            Ok(c) => affected
                .keys()
                .filter(|&&i| {
                    c[i].as_ref()
                        .and_then(|c| c.server())
                        .is_some_and(|s| s.id != rec.server_id)
                })
                .count() as u64,
            Err(_) => 0,
        };
        report.affected_clients = Some(affected.len() as u64);
        report.clients_moved = Some(moved);
        report.recovery_seconds = if affected.values().all(Option::is_some) {
            Some(
                affected
                    .values()
                    .flatten()
                    .map(|t| t.duration_since(rec.killed_at).as_secs_f64())
                    .fold(0.0, f64::max),
            )
        } else {
            None
        };
    }
    report
}

fn short(e: &tether_client::Error) -> String {
    match e {
        tether_client::Error::Status { status, body, .. } => {
            format!(
                "{} {}",
                status.as_u16(),
                body.as_ref().map(|b| b.error.as_str()).unwrap_or("")
            )
        }
        tether_client::Error::Connect { .. } => "cannot connect".into(),
        tether_client::Error::Transport { .. } => "transport failure".into(),
        tether_client::Error::NoServerAvailable { .. } => "no server available".into(),
        tether_client::Error::SessionExpired { .. } => "session expired".into(),
        other => other.to_string(),
    }
}

async fn count_relocks(mut events: tokio::sync::broadcast::Receiver<Event>, tally: Arc<Tally>) {
    loop {
        match events.recv().await {
            Ok(Event::ServerChanged { reason, .. }) => bump(&tally.relocks, reason),
            Ok(Event::Relocked { .. }) => {
                tally.hints.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("the demo's event counter missed {n} events");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
