//! `tether demo --serve`'s crowd and event feed: a few simulated clients
//! (the Rust SDK, geo DNS over the proxies, as in phase 2 of the demo) run
//! workflows for as long as the demo is up, so the page has something to
//! show: who is locked where, lock changes by reason, and a feed of what
//! happened (the crowd's lock changes, the operator's kills and restarts).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use tether_client::{Client, Event, Routing};

use crate::geo::{self, GeoDns, Location};

/// How many feed entries the demo keeps.
const FEED: usize = 200;

/// One entry of the live feed.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEntry {
    pub seq: u64,
    /// Milliseconds since the demo started.
    pub t_ms: u64,
    /// `relock`, `kill`, `start`, `discovery`, `info`.
    pub kind: String,
    /// The region the entry is about, if any (the page colours by it).
    pub region: Option<String>,
    pub text: String,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    feed: VecDeque<FeedEntry>,
    /// Per crowd client: the server it is locked to.
    locks: Vec<Option<String>>,
    relocks: BTreeMap<String, u64>,
    completed: u64,
    restarted: u64,
    failed: u64,
}

/// The demo's live state, shared by the crowd and the page's API.
pub struct Live {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Live {
    pub fn new(clients: usize) -> Arc<Live> {
        Arc::new(Live {
            started: Instant::now(),
            inner: Mutex::new(Inner {
                locks: vec![None; clients],
                ..Inner::default()
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Adds a feed entry.
    pub fn note(&self, kind: &str, region: Option<&str>, text: String) {
        let t_ms = self.started.elapsed().as_millis() as u64;
        self.with(|i| {
            i.seq += 1;
            i.feed.push_back(FeedEntry {
                seq: i.seq,
                t_ms,
                kind: kind.to_owned(),
                region: region.map(str::to_owned),
                text,
            });
            while i.feed.len() > FEED {
                i.feed.pop_front();
            }
        });
    }

    /// The crowd as JSON: clients per server, counts, relocks by reason,
    /// and the feed entries after `since`.
    pub fn snapshot(&self, since: u64) -> serde_json::Value {
        self.with(|i| {
            let mut locked: BTreeMap<&str, u64> = BTreeMap::new();
            for s in i.locks.iter().flatten() {
                *locked.entry(s.as_str()).or_insert(0) += 1;
            }
            let feed: Vec<&FeedEntry> = i.feed.iter().filter(|e| e.seq > since).collect();
            json!({
                "clients": i.locks.len(),
                "lockedTo": locked,
                "completed": i.completed,
                "restarted": i.restarted,
                "failed": i.failed,
                "relocks": i.relocks,
                "feed": feed,
                "seq": i.seq,
                "uptimeMs": self.started.elapsed().as_millis() as u64,
            })
        })
    }
}

/// The region of a server id (`eu-1` → `eu`), for colouring.
fn region_of(server: &str) -> &str {
    server.split('-').next().unwrap_or(server)
}

/// Starts `clients` simulated clients (users `crowd-user` numbers from
/// the sample app's seed users) over `proxies`, until the returned handles
/// are aborted.
pub fn start_crowd(
    live: Arc<Live>,
    proxies: Vec<String>,
    clients: usize,
    reconnect_wait: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let geo = GeoDns::new(proxies, "/healthz");
    let mut tasks = vec![geo.start_checks()];
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_default();
    for i in 0..clients {
        let (geo, http, live) = (geo.clone(), http.clone(), live.clone());
        tasks.push(tokio::spawn(async move {
            crowd_client(i, geo, http, live, reconnect_wait).await;
        }));
    }
    tasks
}

async fn crowd_client(
    i: usize,
    geo: Arc<GeoDns>,
    http: reqwest::Client,
    live: Arc<Live>,
    reconnect_wait: Duration,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4242 + i as u64);
    let at = Location::new(i % geo.regions());
    let user = format!("user-{:04}", 100 + i);
    let client = match Client::builder()
        .resolver(geo::resolver(geo.clone(), at))
        .routing(Routing::Locked)
        .http_client(http)
        .request_timeout(Duration::from_secs(5))
        .reconnect_wait(reconnect_wait)
        .max_reconnect_attempts(u32::MAX)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            live.note("info", None, format!("{user}: client setup failed: {e}"));
            return;
        }
    };
    let mut events = client.events();
    let feed = live.clone();
    let who = user.clone();
    // Ends when the client (and its event sender) is dropped.
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::ServerChanged { from, to, reason }) => {
                    feed.with(|i| *i.relocks.entry(reason.clone()).or_insert(0) += 1);
                    feed.note(
                        "relock",
                        Some(region_of(&to.id)),
                        format!("{who} moved {} → {} ({reason})", from.id, to.id),
                    );
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    // Logging in may have to wait for a proxy to come back.
    loop {
        match client
            .login(&json!({"username": user, "password": "demo"}))
            .await
        {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    let set_lock = |c: &Client| {
        let s = c.server().map(|s| s.id);
        live.with(|l| l.locks[i] = s);
    };
    set_lock(&client);
    'workflows: loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
        if client.refresh().await.is_err() {
            set_lock(&client);
            continue;
        }
        set_lock(&client);
        let _critical = client.critical_task();
        let home = client.server().map(|s| s.id).unwrap_or_default();
        let mut order = String::new();
        for step in 0..3 {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
            }
            let (path, body) = match step {
                0 => ("/orders".to_owned(), json!({"userId": user})),
                1 => (
                    format!("/orders/{order}/items"),
                    json!({"sku": "book", "qty": 1}),
                ),
                _ => (format!("/orders/{order}/checkout"), json!({})),
            };
            let answer = client
                .request(tether_client::Method::POST, &path, Some(&body))
                .await;
            set_lock(&client);
            let now_on = client.server().map(|s| s.id).unwrap_or_default();
            match answer {
                _ if now_on != home => {
                    live.with(|l| l.restarted += 1);
                    continue 'workflows;
                }
                Ok(r) if r.status.is_success() => {
                    if step == 0 {
                        let v: serde_json::Value = r.json().unwrap_or_default();
                        order = v["orderId"].as_str().unwrap_or_default().to_owned();
                    }
                }
                Ok(_) => {
                    live.with(|l| l.failed += 1);
                    continue 'workflows;
                }
                Err(_) => {
                    let _ = client.refresh_unreachable().await;
                    set_lock(&client);
                    live.with(|l| l.restarted += 1);
                    continue 'workflows;
                }
            }
        }
        live.with(|l| l.completed += 1);
    }
}
