//! SDK clients running the sample app's order workflow in a loop until
//! told to stop, counting what finished and what failed.
//!
//! Each client is a `tether_client::Client` (its default rules: requests
//! to the locked server, an `Idempotency-Key` on every POST, resends only
//! when the answer proves the app did not act, or with the key). A
//! workflow is the demo's: refresh between workflows (the client may be
//! re-placed then), then, as one critical task, create an order, add one
//! item, check out. Every started workflow ends counted: the stop flag is
//! read only between workflows.
//!
//! Failures are strict: a step or a refresh that does not end in a 2xx,
//! for any reason, is a failure with its cause kept. The orders of the
//! completed workflows are kept too, so a test can check them against the
//! app's own records ([`WorkflowReport::check_app`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_client::Client;

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct WorkflowOptions {
    /// A pause after each workflow (keeps a loaded machine responsive).
    pub think: Duration,
    /// Each client stops on its own after this many workflows (a bound on
    /// the count, whatever the test does).
    pub max_per_client: u64,
    /// The SDK's reconnect wait and budget.
    pub reconnect_wait: Duration,
    pub max_reconnect_attempts: u32,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        WorkflowOptions {
            think: Duration::from_millis(20),
            max_per_client: 2000,
            reconnect_wait: Duration::from_millis(300),
            max_reconnect_attempts: 20,
        }
    }
}

/// A completed workflow: its order and the server that ran it.
#[derive(Clone, Debug)]
pub struct Done {
    pub user: String,
    pub order_id: String,
    pub server_id: String,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    completed: AtomicU64,
    /// Refreshes the proxy answered in "extend" mode
    /// (`reason: discovery_unavailable`).
    extended: AtomicU64,
    done: Mutex<Vec<Done>>,
    failures: Mutex<Vec<String>>,
}

/// The running clients ([`Workflows::start`]); [`Workflows::stop`] ends
/// them and reports.
pub struct Workflows {
    shared: Arc<Shared>,
    clients: Vec<(String, Client)>,
    /// The server each client was locked to at login.
    pub logged_in_on: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What the clients did, once stopped.
#[derive(Debug)]
pub struct WorkflowReport {
    pub completed: u64,
    /// Every failure, as `user: what: cause`.
    pub failures: Vec<String>,
    pub done: Vec<Done>,
    /// Refreshes answered in "extend" mode.
    pub extended: u64,
    /// Users no longer signed in at the end (their refresh token refused).
    pub signed_out: Vec<String>,
    /// Server changes the clients saw (SDK counters), summed.
    pub server_changes: u64,
    /// Resends the SDK made, and answers replayed from the proxies'
    /// Idempotency-Key stores, summed.
    pub retries: u64,
    pub replayed: u64,
    pub elapsed: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Workflows {
    /// Logs in one client per `(global_url, user)` (password `demo`, the
    /// sample app's) and starts its loop. Panics when a login fails: a
    /// test's setup is broken then, not its subject.
    pub async fn start(clients: &[(String, String)], opts: WorkflowOptions) -> Workflows {
        let shared = Arc::new(Shared::default());
        let mut logged = Vec::new();
        let mut logged_in_on = Vec::new();
        for (global, user) in clients {
            let client = Client::builder()
                .global_url(global.as_str())
                .reconnect_wait(opts.reconnect_wait)
                .max_reconnect_attempts(opts.max_reconnect_attempts)
                .connect_timeout(Duration::from_millis(500))
                .request_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|e| panic!("client for {user}: {e}"));
            let login = client
                .login(&json!({"username": user, "password": "demo"}))
                .await
                .unwrap_or_else(|e| panic!("login of {user} at {global}: {e}"));
            logged_in_on.push(login.server.id.clone());
            logged.push((user.clone(), client));
        }
        let mut tasks = Vec::new();
        for (user, client) in &logged {
            let (user, client, shared, opts) =
                (user.clone(), client.clone(), shared.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !shared.stop.load(Ordering::SeqCst) && n < opts.max_per_client {
                    n += 1;
                    match one(&client, &user).await {
                        Ok((order_id, server_id, extended)) => {
                            if extended {
                                shared.extended.fetch_add(1, Ordering::Relaxed);
                            }
                            lock(&shared.done).push(Done {
                                user: user.clone(),
                                order_id,
                                server_id,
                            });
                            shared.completed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => lock(&shared.failures).push(format!("{user}: {e}")),
                    }
                    tokio::time::sleep(opts.think).await;
                }
            }));
        }
        Workflows {
            shared,
            clients: logged,
            logged_in_on,
            tasks,
            started: Instant::now(),
        }
    }

    /// Workflows completed so far.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Refreshes answered in "extend" mode so far.
    pub fn extended(&self) -> u64 {
        self.shared.extended.load(Ordering::Relaxed)
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<String> {
        lock(&self.shared.failures).clone()
    }

    /// The server each client is locked to now.
    pub fn servers(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|(_, c)| c.server().map(|s| s.id).unwrap_or_default())
            .collect()
    }

    /// Waits (at most `within`) until `more` workflows have completed
    /// after the call; panics with the failures so far otherwise.
    pub async fn wait_for_more(&self, more: u64, within: Duration) {
        let target = self.completed() + more;
        let deadline = Instant::now() + within;
        while self.completed() < target {
            assert!(
                Instant::now() < deadline,
                "fewer than {more} workflows completed within {within:?} ({} in all); failures: {:?}",
                self.completed(),
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the loops (each finishes the workflow it is in) and reports.
    pub async fn stop(self) -> WorkflowReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            if let Err(e) = t.await {
                lock(&self.shared.failures).push(format!("a client task failed: {e}"));
            }
        }
        let signed_out = self
            .clients
            .iter()
            .filter(|(_, c)| !c.is_logged_in())
            .map(|(u, _)| u.clone())
            .collect();
        let stats: Vec<_> = self.clients.iter().map(|(_, c)| c.stats()).collect();
        WorkflowReport {
            completed: self.shared.completed.load(Ordering::SeqCst),
            failures: lock(&self.shared.failures).clone(),
            done: lock(&self.shared.done).clone(),
            extended: self.shared.extended.load(Ordering::Relaxed),
            signed_out,
            server_changes: stats.iter().map(|s| s.server_changes).sum(),
            retries: stats.iter().map(|s| s.retries).sum(),
            replayed: stats.iter().map(|s| s.replayed).sum(),
            elapsed: self.started.elapsed(),
        }
    }
}

/// One workflow: refresh, then create, add an item, check out, as one
/// critical task on one server. The order id, the server, and whether the
/// refresh was answered in "extend" mode.
async fn one(client: &Client, user: &str) -> Result<(String, String, bool), String> {
    let refreshed = client
        .refresh()
        .await
        .map_err(|e| format!("refresh: {e}"))?;
    let extended = refreshed.reason == "discovery_unavailable";
    let _critical = client.critical_task();
    let home = client.server().map(|s| s.id).unwrap_or_default();
    let created = step(client, "create", "/orders", json!({"userId": user})).await?;
    let order = created["orderId"]
        .as_str()
        .ok_or_else(|| format!("create: no orderId in {created}"))?
        .to_owned();
    step(
        client,
        "add_item",
        &format!("/orders/{order}/items"),
        json!({"sku": "book", "qty": 1}),
    )
    .await?;
    step(
        client,
        "checkout",
        &format!("/orders/{order}/checkout"),
        json!({}),
    )
    .await?;
    let now_on = client.server().map(|s| s.id).unwrap_or_default();
    if now_on != home {
        return Err(format!(
            "order {order}: the server changed from {home} to {now_on} during the workflow"
        ));
    }
    Ok((order, home, extended))
}

async fn step(client: &Client, name: &str, path: &str, body: Value) -> Result<Value, String> {
    let r = client
        .post(path, &body)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    if !r.status.is_success() {
        return Err(format!("{name}: {} {}", r.status, r.text()));
    }
    r.json::<Value>()
        .map_err(|e| format!("{name}: {e} in {}", r.text()))
}

impl WorkflowReport {
    /// Checks the completed workflows against the sample app's own
    /// records, read straight from its listeners (`app_urls`, one per
    /// region, replicating to each other): once replication has settled,
    /// every region holds exactly the orders the clients created (none
    /// lost, none created twice by a resend), and each completed order
    /// holds exactly one item, is checked out, and was written exactly
    /// three times (no step applied twice). Panics with what differs.
    pub async fn check_app(&self, http: &reqwest::Client, app_urls: &[String]) {
        assert!(
            self.failures.is_empty(),
            "check_app needs a run without failures"
        );
        let want = self.done.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut settled = true;
            let mut seen = Vec::new();
            for url in app_urls {
                let stats: Value = match http.get(format!("{url}/stats")).send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => Value::Null,
                };
                seen.push(stats.clone());
                if stats["pendingReplication"] != 0 || stats["orders"] != want {
                    settled = false;
                }
            }
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the app's regions do not hold exactly the {want} orders of the completed workflows: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut items = 0u64;
        for d in &self.done {
            for url in app_urls {
                let r = http
                    .get(format!("{url}/orders/{}", d.order_id))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("reading order {}: {e}", d.order_id));
                assert_eq!(r.status(), 200, "order {} at {url}", d.order_id);
                let o: Value = r.json().await.expect("order JSON");
                assert_eq!(o["userId"], d.user.as_str(), "{o}");
                assert_eq!(o["status"], "checked_out", "{o}");
                assert_eq!(o["version"], 3, "written exactly three times: {o}");
                assert_eq!(
                    o["items"],
                    json!([{"sku": "book", "qty": 1}]),
                    "exactly one item: {o}"
                );
                if url == &app_urls[0] {
                    items += o["items"][0]["qty"].as_u64().unwrap_or(0);
                }
            }
        }
        assert_eq!(items, want, "one book per completed workflow");
    }
}
