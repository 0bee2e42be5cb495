//! The etcd store: any number of stateless discovery nodes share one etcd
//! cluster and agree on every answer (docs/design.md §6a).
//!
//! **Keys** (under the configured prefix, `/tether/` by default):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `reg/servers/<id>` | `{"region","url","load","healthy","draining"}` | the server's own lease, TTL = the eviction TTL |
//! | `reg/drain/<id>` | `1` (an operator's drain mark) | the server's lease, so the mark dies with the entry |
//! | `reg/revoked/<family>` | `{"until"}` | an expiry bucket (below) |
//! | `families/<family>` | the rotation state (hashes, never tokens) | an expiry bucket |
//! | `meta/epoch` | Unix microseconds when the deployment's first node started | none |
//! | `meta/sync` | empty: written by a node when (re)starting its watch | none |
//! | `alive` | Unix ms when a node last found etcd answering (every second) | none |
//! | `outage` | `{"from","to"}`: Unix ms of the last time no node was alive | none |
//!
//! **Heartbeats and eviction.** A server's key lives under a lease whose
//! TTL is the eviction TTL, so etcd itself evicts a silent server (the
//! lease expires and the key is deleted, by whichever member leads). A
//! heartbeat that changes nothing material (the rule of
//! [`crate::registry::load_changed_materially`]) is one `LeaseKeepAlive`
//! of the existing lease: no write, no new revision, no wake-up of
//! long-polls. A heartbeat that changes something is a transaction that
//! compares the key's mod revision with the one this node last saw: it
//! puts the new value (under the same lease, kept alive too) when nobody
//! changed it meanwhile, and otherwise reads the current value and decides
//! again. A new id is the same transaction against mod revision 0
//! ("absent"); when it fails because a server with another URL got there
//! first, the answer is 409. So the 409 rule holds however many nodes
//! take heartbeats at once. (Keep-alive, not a new lease per heartbeat: a
//! new lease means a put, so a new revision every heartbeat, and the
//! version would never stand still.)
//!
//! **Versions.** The version is the etcd revision of the last change under
//! `reg/`, plus an epoch: identical on every node that has seen the same
//! history, and it grows forever, across restarts of discovery and of etcd.
//! The epoch (`meta/epoch`) is the Unix time in microseconds when the first
//! node of the deployment started, written once (put-if-absent) and read by
//! every node; it keeps versions above those an in-memory discovery handed
//! out before the deployment moved to etcd, since proxies refuse a version
//! that goes backwards. Family
//! rotations live outside `reg/`, so they never move it. Each node holds
//! ONE watch (on `reg/`, and `meta/` for its own sync marker), which feeds a local copy of the registry (listings
//! and deltas are served from it, without an etcd round trip) and wakes
//! long-polls. On start the node reads `reg/` at revision R; the newest
//! mod revision in it is M; it watches from M + 1, so that deletions
//! (evictions) between M and R are replayed and the version it reports is
//! the same as a node that has been running all along. When that history
//! is compacted, the version starts at the compaction point instead (a
//! node that started then may differ until the next change; the only cost
//! is one refetch by a proxy that switches nodes).
//!
//! **Families.** A rotation reads the family and its revocation in one
//! transaction, decides exactly as the in-memory store does, and writes
//! with a compare on the family's mod revision (fencing: a concurrent
//! rotation on another node makes the compare fail, and the loser decides
//! again on the new state, which yields the grace answer or reuse). A
//! lease is never proof of ownership; leases only make keys expire. A
//! family's key and its revocation expire with an *expiry bucket*: a lease
//! per hour of expiry time (granted by a node once, reused for every family
//! whose tokens expire in that hour), so a revocation stays at least until
//! the family's tokens have expired, across any restart of discovery.
//!
//! **The grace window counts service time.** A rotation that etcd applied
//! just before every node went down (the answer lost with the node) left
//! the client with its old token: proxies extend refreshes while no node
//! answers, handing that token back. When discovery returns, the old token
//! is the family's `previous`; measured by the wall clock its grace window
//! is long over, and it would read as reuse (a sign-out). So the window
//! does not count the last outage of the whole service: every node writes
//! `alive` each second; a node that finds it older than
//! [`OUTAGE_GAP`] records `outage = {from, to}` before it answers, and a
//! rotation subtracts the part of that outage after the family's last
//! rotation. A replay is still reuse after the window's worth of time
//! with discovery up, as always.
//!
//! **Availability.** A probe does a linearizable read every second; while
//! it fails (no quorum, no member reachable) or before the watch has
//! caught up, every request answers 503 (proxies then keep their last
//! good snapshot). When quorum returns, the probe succeeds, the watch
//! reconnects, and service resumes without a manual step. etcd renews
//! every lease when a new leader is elected, so servers are not evicted
//! because etcd was down.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tether_protocol::delta::Delta;
use tether_protocol::wire::{Heartbeat, RotateOutcome, RotateRequest, RotateResponse, ServerEntry};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{HeartbeatError, StoreError};
use crate::config::EtcdConfig;
use crate::metrics::Metrics;
use crate::registry::{load_changed_materially, HeartbeatRejected, Listing, REMOVED_LOG};

/// How often the probe checks that etcd answers linearizable reads.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Granularity of family expiry buckets (one lease per bucket).
const BUCKET_SECONDS: u64 = 3600;
/// Compare-and-set attempts before a write gives up with a 503.
const CAS_ATTEMPTS: usize = 5;
/// `alive` older than this: no node was up in between, an outage.
const OUTAGE_GAP: Duration = Duration::from_secs(3);

/// The last time no discovery node was alive (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Outage {
    from: u64,
    to: u64,
}

/// Milliseconds of service time from `since` to `now`: wall time minus
/// the part of `outage` in between.
fn service_ms(since: u64, now: u64, outage: Option<Outage>) -> u64 {
    let wall = now.saturating_sub(since);
    let Some(o) = outage else {
        return wall;
    };
    let overlap = o.to.min(now).saturating_sub(o.from.max(since));
    wall.saturating_sub(overlap)
}

/// A server's stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    region: String,
    url: String,
    load: f64,
    healthy: bool,
    #[serde(default)]
    draining: bool,
}

impl Record {
    fn from_heartbeat(hb: &Heartbeat) -> Record {
        Record {
            region: hb.region.clone(),
            url: hb.url.clone(),
            load: hb.load,
            healthy: hb.healthy,
            draining: hb.draining,
        }
    }

    /// Whether replacing `self` by `new` changes something proxies care
    /// about (the memory store's rule).
    fn material(&self, new: &Record) -> bool {
        self.region != new.region
            || self.url != new.url
            || self.healthy != new.healthy
            || self.draining != new.draining
            || load_changed_materially(self.load, new.load)
    }
}

/// A family's stored rotation state (see `families.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FamilyRecord {
    current: String,
    previous: Option<String>,
    rotated_at_ms: u64,
    iat: u64,
    srv: String,
    rgn: String,
    expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revocation {
    until: u64,
}

struct Keys {
    reg: String,
    servers: String,
    drain: String,
    revoked: String,
    families: String,
    epoch: String,
    meta: String,
    sync: String,
    /// Outside the watched range: their writes wake no watch.
    alive: String,
    outage: String,
    /// End of the watched range: `meta/` up to and including `reg/`.
    watch_end: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            reg: format!("{prefix}reg/"),
            servers: format!("{prefix}reg/servers/"),
            drain: format!("{prefix}reg/drain/"),
            revoked: format!("{prefix}reg/revoked/"),
            families: format!("{prefix}families/"),
            epoch: format!("{prefix}meta/epoch"),
            meta: format!("{prefix}meta/"),
            sync: format!("{prefix}meta/sync"),
            alive: format!("{prefix}alive"),
            outage: format!("{prefix}outage"),
            // "reg0" is the first key after every "reg/..." key.
            watch_end: format!("{prefix}reg0"),
        }
    }
}

/// One server in this node's copy of the registry.
struct Cached {
    rec: Record,
    lease: i64,
    mod_rev: i64,
    /// Revision of the last change to anything listed about it.
    changed_at: i64,
    /// When this node last had news of it (a heartbeat it handled, or a
    /// stored change).
    last_seen: Instant,
    /// Listing JSON up to `"lastSeenMs":`, as in the memory registry.
    head: Vec<u8>,
}

/// This node's copy of `reg/`, fed by the watch.
struct Cache {
    servers: BTreeMap<String, Cached>,
    drains: HashSet<String>,
    /// Revoked family → revision of its revocation.
    revoked: BTreeMap<String, i64>,
    removed: VecDeque<(i64, String)>,
    /// The oldest `since` a delta can be answered for.
    floor: i64,
    version: i64,
    listing_len_hint: usize,
    /// Regions ever listed, so a region's live gauge drops to 0 (not
    /// stale) when its last server goes.
    regions_seen: BTreeSet<String>,
    /// Servers removed (lease expired) since the metrics last heard.
    evicted_unreported: u64,
}

impl Cache {
    fn new(version: i64) -> Cache {
        Cache {
            servers: BTreeMap::new(),
            drains: HashSet::new(),
            revoked: BTreeMap::new(),
            removed: VecDeque::new(),
            floor: version,
            version,
            listing_len_hint: 64,
            regions_seen: BTreeSet::new(),
            evicted_unreported: 0,
        }
    }

    fn rebuild_head(e: &mut Cached, id: &str, admin_drain: bool) {
        #[derive(Serialize)]
        struct Head<'a> {
            id: &'a str,
            region: &'a str,
            url: &'a str,
            load: f64,
            healthy: bool,
            draining: bool,
        }
        let head = Head {
            id,
            region: &e.rec.region,
            url: &e.rec.url,
            load: e.rec.load,
            healthy: e.rec.healthy,
            draining: e.rec.draining || admin_drain,
        };
        e.head.clear();
        // Strings, an f64 and bools into a Vec: cannot fail.
        serde_json::to_writer(&mut e.head, &head).expect("serialising a server entry into a Vec");
        e.head.pop();
        e.head.extend_from_slice(b",\"lastSeenMs\":");
    }

    fn to_wire(&self, id: &str, e: &Cached, now: Instant, ttl: Duration) -> ServerEntry {
        ServerEntry {
            id: id.to_owned(),
            region: e.rec.region.clone(),
            url: e.rec.url.clone(),
            load: e.rec.load,
            healthy: e.rec.healthy,
            draining: e.rec.draining || self.drains.contains(id),
            last_seen_ms: age_ms(e.last_seen, now, ttl),
        }
    }

    /// Applies one key-value (a put) or a deletion at `rev`.
    fn apply(
        &mut self,
        keys: &Keys,
        key: &[u8],
        put: Option<(&[u8], i64)>,
        rev: i64,
        now: Instant,
    ) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        if let Some(id) = key.strip_prefix(keys.servers.as_str()) {
            match put {
                Some((value, lease)) => {
                    let rec: Record = match serde_json::from_slice(value) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(key, error = %e, "ignoring an unreadable server record in etcd");
                            return;
                        }
                    };
                    let admin = self.drains.contains(id);
                    let e = self.servers.entry(id.to_owned()).or_insert_with(|| Cached {
                        rec: rec.clone(),
                        lease,
                        mod_rev: rev,
                        changed_at: rev,
                        last_seen: now,
                        head: Vec::with_capacity(160),
                    });
                    e.rec = rec;
                    e.lease = lease;
                    e.mod_rev = rev;
                    e.changed_at = rev;
                    e.last_seen = now;
                    Cache::rebuild_head(e, id, admin);
                }
                None => {
                    if self.servers.remove(id).is_some() {
                        self.evicted_unreported += 1;
                        self.removed.push_back((rev, id.to_owned()));
                        while self.removed.len() > REMOVED_LOG {
                            if let Some((v, _)) = self.removed.pop_front() {
                                self.floor = self.floor.max(v);
                            }
                        }
                    }
                }
            }
        } else if let Some(id) = key.strip_prefix(keys.drain.as_str()) {
            let admin = put.is_some();
            if admin {
                self.drains.insert(id.to_owned());
            } else {
                self.drains.remove(id);
            }
            if let Some(e) = self.servers.get_mut(id) {
                e.changed_at = rev;
                Cache::rebuild_head(e, id, admin);
            }
        } else if let Some(family) = key.strip_prefix(keys.revoked.as_str()) {
            if put.is_some() {
                self.revoked.insert(family.to_owned(), rev);
            } else {
                self.revoked.remove(family);
            }
        } else {
            return;
        }
        self.version = self.version.max(rev);
    }
}

/// The age a listing shows. A node only hears of heartbeats it handles
/// itself, or of stored changes; the key being present proves the lease
/// alive, so the age is capped at the TTL.
fn age_ms(last_seen: Instant, now: Instant, ttl: Duration) -> u64 {
    let age = now.saturating_duration_since(last_seen).min(ttl);
    u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

/// An etcd request that failed; `lease_gone` when it named a lease etcd
/// no longer has (an expired expiry bucket, a server's lease that ran out).
struct Fail {
    lease_gone: bool,
    message: String,
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        StoreError(format!("etcd: {}", f.message))
    }
}

impl From<Fail> for HeartbeatError {
    fn from(f: Fail) -> HeartbeatError {
        HeartbeatError::Unavailable(f.into())
    }
}

pub struct EtcdStore {
    client: Client,
    keys: Keys,
    ttl: Duration,
    lease_ttl: i64,
    grace: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
    cache: Mutex<Cache>,
    version_tx: watch::Sender<u64>,
    /// Highest revision the watch has delivered everything up to.
    applied_tx: watch::Sender<i64>,
    /// The watch has caught up with etcd since it was (re)started.
    synced: AtomicBool,
    /// The last probe succeeded.
    healthy: AtomicBool,
    /// Expiry bucket (Unix seconds) → lease granted by this node.
    buckets: Mutex<HashMap<u64, i64>>,
    /// Added to revisions to make versions (`meta/epoch`); 0 until read.
    epoch: AtomicU64,
}

impl EtcdStore {
    /// Connects (lazily: no member needs to be up yet) and starts the
    /// watch and the probe, which run until `stop` turns true.
    pub async fn start(
        config: &EtcdConfig,
        ttl: Duration,
        grace: Duration,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<EtcdStore>, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), config.request_timeout)
            .with_keep_alive_while_idle(true)
            // A member that loses its leader cancels our watch, so the
            // node resyncs through a member that still has one.
            .with_require_leader(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user.clone(), password.expose().to_owned());
        }
        if config.ca_pem.is_some() || config.identity_pem.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &config.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        // With a user, connecting authenticates at once, which needs a
        // member: bounded so a start with etcd down fails clearly.
        let client = tokio::time::timeout(
            config.connect_timeout + config.request_timeout,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        .map_err(|_| StoreError("etcd: connecting timed out".into()))?
        .map_err(|e| StoreError(format!("etcd: cannot connect: {e}")))?;
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let store = Arc::new(EtcdStore {
            client,
            keys: Keys::new(&config.prefix),
            ttl,
            lease_ttl: i64::try_from(ttl_secs.max(1)).unwrap_or(i64::MAX),
            grace,
            timeout: config.request_timeout,
            metrics: metrics.clone(),
            cache: Mutex::new(Cache::new(0)),
            version_tx: watch::channel(0).0,
            applied_tx: watch::channel(0).0,
            synced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            buckets: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        });
        metrics.set_store_up(false);
        tokio::spawn(store.clone().watch_loop(stop.clone()));
        tokio::spawn(store.clone().probe_loop(stop));
        Ok(store)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The registry version for etcd revision `rev`: the deployment's
    /// epoch plus the revision (see the module comment).
    fn as_version(&self, rev: i64) -> u64 {
        self.epoch
            .load(Ordering::Acquire)
            .saturating_add(u64::try_from(rev).unwrap_or(0))
    }

    /// Reads the deployment's epoch, creating it on first use (one
    /// put-if-absent transaction, so every node reads the same value).
    async fn load_epoch(&self) -> Result<(), String> {
        if self.epoch.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let key = self.keys.epoch.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), unix_micros().to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        self.txn("sync", txn).await.map_err(|f| f.message)?;
        let got = self.get("sync", &key, None).await.map_err(|f| f.message)?;
        let epoch = got
            .kvs()
            .first()
            .and_then(|kv| {
                std::str::from_utf8(kv.value())
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .filter(|&e| e > 0)
            .ok_or_else(|| format!("{key} in etcd does not hold a version epoch"))?;
        self.epoch.store(epoch, Ordering::Release);
        Ok(())
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` unless the watch is caught up and etcd answers.
    fn check(&self) -> Result<(), StoreError> {
        if !self.synced.load(Ordering::Acquire) {
            return Err(StoreError(
                "this discovery node is not in sync with etcd (starting, or its watch is reconnecting)".into(),
            ));
        }
        if !self.healthy.load(Ordering::Acquire) {
            return Err(StoreError(
                "etcd does not answer linearizable reads (no quorum, or no member reachable)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Runs one etcd request within the timeout, timing it. A request
    /// that could not reach a member (connection refused: a member is
    /// down; or `Unavailable`) is tried again after a short pause, for up
    /// to [`UNREACHABLE_RETRY_FOR`]: the client balances over every
    /// endpoint, but its balancer (power of two choices by load) favours a
    /// dead member, whose requests fail at once, so with one member of
    /// three gone about two attempts in three meet it. Three attempts were
    /// not enough (one request in four failed for seconds after a member
    /// died, and both discovery nodes answered 503); retrying for half a
    /// second makes that vanishingly rare. Retrying a compare-and-set is
    /// safe: if the first attempt was applied, the retry's compare fails
    /// and the caller reads its own write.
    async fn call<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, Fail>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = std::time::Instant::now();
        let deadline = Instant::now() + self.timeout;
        let retry_until = deadline.min(Instant::now() + UNREACHABLE_RETRY_FOR);
        let mut pause = Duration::from_millis(5);
        let result = loop {
            match tokio::time::timeout_at(deadline, f()).await {
                Ok(Ok(v)) => break Ok(v),
                Ok(Err(e)) if unreachable(&e) && Instant::now() + pause < retry_until => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(40));
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    break Err(Fail {
                        lease_gone: message.contains("lease not found"),
                        message,
                    });
                }
                Err(_) => {
                    break Err(Fail {
                        lease_gone: false,
                        message: format!("{op} timed out after {} ms", self.timeout.as_millis()),
                    })
                }
            }
        };
        let secs = start.elapsed().as_secs_f64();
        self.metrics.store_op(op, secs, result.is_ok());
        result
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse, Fail> {
        self.call(op, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn get(
        &self,
        op: &'static str,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, Fail> {
        self.call(op, || {
            let mut kv = self.client.kv_client();
            let key = key.to_owned();
            let options = options.clone();
            async move { kv.get(key, options).await }
        })
        .await
    }

    /// One keep-alive of `lease`: `Ok(false)` when etcd no longer has it.
    async fn keep_alive(&self, lease: i64) -> Result<bool, Fail> {
        match self
            .call("keep_alive", || {
                let mut client = self.client.lease_client();
                async move { client.keep_alive(lease).await.map(|_| ()) }
            })
            .await
        {
            Ok(()) => Ok(true),
            Err(f) if f.lease_gone => Ok(false),
            Err(f) => Err(f),
        }
    }

    async fn grant(&self, ttl: i64) -> Result<i64, Fail> {
        self.call("grant", || {
            let mut client = self.client.lease_client();
            async move { client.grant(ttl, None).await.map(|r| r.id()) }
        })
        .await
    }

    fn revoke_lease_later(&self, lease: i64) {
        let mut client = self.client.lease_client();
        tokio::spawn(async move {
            let _ignored = client.revoke(lease).await;
        });
    }

    /// Waits (bounded) until the watch has delivered revision `rev`, so a
    /// write is visible in this node's next answer.
    async fn wait_applied(&self, rev: i64) {
        let mut rx = self.applied_tx.subscribe();
        let _ = tokio::time::timeout(self.timeout, rx.wait_for(|a| *a >= rev)).await;
    }

    pub fn current_version(&self) -> Result<u64, StoreError> {
        self.check()?;
        Ok(self.as_version(self.cache().version))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    pub async fn heartbeat(&self, hb: Heartbeat, now: Instant) -> Result<u64, HeartbeatError> {
        self.check()?;
        let key = format!("{}{}", self.keys.servers, hb.id);
        let new = Record::from_heartbeat(&hb);
        let cached = {
            let c = self.cache();
            c.servers
                .get(&hb.id)
                .map(|e| (e.rec.clone(), e.lease, e.mod_rev))
        };
        // The common case: nothing material changed, so only the lease is
        // renewed.
        if let Some((rec, lease, _)) = &cached {
            if !rec.material(&new) && self.keep_alive(*lease).await? {
                self.touch(&hb.id, now);
                return Ok(self.as_version(self.cache().version));
            }
        }
        let value = serde_json::to_vec(&new).expect("serialising a server record");
        let mut observed = cached;
        let mut granted: Option<i64> = None;
        for _ in 0..CAS_ATTEMPTS {
            if let Some((rec, _, _)) = &observed {
                if rec.url != hb.url {
                    if let Some(l) = granted {
                        self.revoke_lease_later(l);
                    }
                    return Err(HeartbeatRejected::IdConflict {
                        id: hb.id,
                        url: rec.url.clone(),
                    }
                    .into());
                }
            }
            let existing = match &observed {
                Some((_, lease, _)) if self.keep_alive(*lease).await? => Some(*lease),
                _ => None,
            };
            let lease = match (existing, granted) {
                (Some(l), _) | (None, Some(l)) => l,
                (None, None) => {
                    let l = self.grant(self.lease_ttl).await?;
                    granted = Some(l);
                    l
                }
            };
            let expect = observed.as_ref().map_or(0, |o| o.2);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expect)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = match self.txn("heartbeat", txn).await {
                Ok(r) => r,
                Err(f) if f.lease_gone => {
                    // The lease ran out between keep-alive and put.
                    observed = observed.map(|(r, _, m)| (r, 0, m));
                    granted = None;
                    continue;
                }
                Err(f) => return Err(f.into()),
            };
            if resp.succeeded() {
                if let Some(l) = granted.filter(|&g| g != lease) {
                    self.revoke_lease_later(l);
                }
                let rev = resp.header().map_or(0, |h| h.revision());
                self.wait_applied(rev).await;
                self.touch(&hb.id, now);
                return Ok(self.as_version(rev));
            }
            observed = first_get(&resp).and_then(|(value, lease, mod_rev)| {
                serde_json::from_slice::<Record>(&value)
                    .ok()
                    .map(|r| (r, lease, mod_rev))
            });
        }
        if let Some(l) = granted {
            self.revoke_lease_later(l);
        }
        Err(StoreError(format!(
            "the heartbeat for {:?} lost {CAS_ATTEMPTS} compare-and-set races in a row",
            hb.id
        ))
        .into())
    }

    fn touch(&self, id: &str, now: Instant) {
        if let Some(e) = self.cache().servers.get_mut(id) {
            e.last_seen = now;
        }
    }

    pub fn listing(&self, now: Instant) -> Result<Listing, StoreError> {
        self.check()?;
        let mut g = self.cache();
        let c = &mut *g;
        let mut body = Vec::with_capacity(c.listing_len_hint);
        let mut num = itoa::Buffer::new();
        body.extend_from_slice(b"{\"version\":");
        body.extend_from_slice(num.format(self.as_version(c.version)).as_bytes());
        body.extend_from_slice(b",\"servers\":[");
        for (i, e) in c.servers.values().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.head);
            body.extend_from_slice(num.format(age_ms(e.last_seen, now, self.ttl)).as_bytes());
            body.push(b'}');
        }
        body.push(b']');
        if !c.revoked.is_empty() {
            body.extend_from_slice(b",\"revokedFamilies\":");
            let families: Vec<&String> = c.revoked.keys().collect();
            body.extend_from_slice(
                &serde_json::to_vec(&families).unwrap_or_else(|_| b"[]".to_vec()),
            );
        }
        body.push(b'}');
        c.listing_len_hint = body.len() + body.len() / 64 + 64;
        Ok(Listing {
            version: self.as_version(c.version),
            body,
        })
    }

    pub fn delta(&self, since: u64, now: Instant) -> Result<Delta, StoreError> {
        self.check()?;
        let c = self.cache();
        let version = self.as_version(c.version);
        let since_rev = since
            .checked_sub(self.epoch.load(Ordering::Acquire))
            .and_then(|r| i64::try_from(r).ok());
        if since > version || since_rev.is_none_or(|r| r < c.floor) {
            return Ok(Delta {
                version,
                full: true,
                changed: c
                    .servers
                    .iter()
                    .map(|(id, e)| c.to_wire(id, e, now, self.ttl))
                    .collect(),
                removed: Vec::new(),
                revoked_families: c.revoked.keys().cloned().collect(),
            });
        }
        let since_rev = since_rev.unwrap_or(i64::MAX);
        let changed = c
            .servers
            .iter()
            .filter(|(_, e)| e.changed_at > since_rev)
            .map(|(id, e)| c.to_wire(id, e, now, self.ttl))
            .collect();
        let mut removed: Vec<String> = c
            .removed
            .iter()
            .rev()
            .take_while(|(v, _)| *v > since_rev)
            .filter(|(_, id)| !c.servers.contains_key(id))
            .map(|(_, id)| id.clone())
            .collect();
        removed.sort();
        removed.dedup();
        let revoked_families = c
            .revoked
            .iter()
            .filter(|(_, v)| **v > since_rev)
            .map(|(f, _)| f.clone())
            .collect();
        Ok(Delta {
            version,
            full: false,
            changed,
            removed,
            revoked_families,
        })
    }

    pub async fn set_admin_drain(
        &self,
        id: &str,
        drain: bool,
        now: Instant,
    ) -> Result<Option<ServerEntry>, StoreError> {
        self.check()?;
        let server_key = format!("{}{id}", self.keys.servers);
        let drain_key = format!("{}{id}", self.keys.drain);
        for _ in 0..CAS_ATTEMPTS {
            let read = Txn::new().and_then([
                TxnOp::get(server_key.clone(), None),
                TxnOp::get(drain_key.clone(), None),
            ]);
            let resp = self.txn("drain", read).await?;
            let ops = resp.op_responses();
            let server = match ops.first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
                _ => None,
            };
            let Some(server) = server else {
                return Ok(None);
            };
            let marked = matches!(ops.get(1), Some(TxnOpResponse::Get(g)) if !g.kvs().is_empty());
            if marked != drain {
                let op = if drain {
                    TxnOp::put(
                        drain_key.clone(),
                        "1",
                        Some(PutOptions::new().with_lease(server.lease())),
                    )
                } else {
                    TxnOp::delete(drain_key.clone(), None)
                };
                let write = Txn::new()
                    .when([Compare::mod_revision(
                        server_key.clone(),
                        CompareOp::Equal,
                        server.mod_revision(),
                    )])
                    .and_then([op]);
                let resp = match self.txn("drain", write).await {
                    Ok(r) => r,
                    // The server's lease ran out: it is gone.
                    Err(f) if f.lease_gone => return Ok(None),
                    Err(f) => return Err(f.into()),
                };
                if !resp.succeeded() {
                    continue;
                }
                self.wait_applied(resp.header().map_or(0, |h| h.revision()))
                    .await;
            }
            let c = self.cache();
            if let Some(e) = c.servers.get(id) {
                let mut entry = c.to_wire(id, e, now, self.ttl);
                entry.draining = e.rec.draining || drain;
                return Ok(Some(entry));
            }
            let rec: Record = serde_json::from_slice(server.value())
                .map_err(|e| StoreError(format!("unreadable record for {id:?}: {e}")))?;
            return Ok(Some(ServerEntry {
                id: id.to_owned(),
                draining: rec.draining || drain,
                region: rec.region,
                url: rec.url,
                load: rec.load,
                healthy: rec.healthy,
                last_seen_ms: 0,
            }));
        }
        Err(StoreError(format!(
            "the drain of {id:?} lost {CAS_ATTEMPTS} races with heartbeats in a row"
        )))
    }

    /// The lease of the expiry bucket that outlives `until` (Unix seconds).
    async fn bucket_lease(&self, until: u64) -> Result<i64, Fail> {
        let bucket = until.div_ceil(BUCKET_SECONDS) * BUCKET_SECONDS + 60;
        if let Some(&lease) = self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&bucket)
        {
            return Ok(lease);
        }
        let now = unix_ms() / 1000;
        let ttl = i64::try_from(bucket.saturating_sub(now).max(1)).unwrap_or(i64::MAX);
        let lease = self.grant(ttl).await?;
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        b.retain(|&end, _| end > now);
        let lease = *b.entry(bucket).or_insert(lease);
        self.metrics.set_store_leases("family", b.len());
        Ok(lease)
    }

    fn forget_bucket(&self, lease: i64) {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, l| *l != lease);
    }

    pub async fn rotate(&self, req: &RotateRequest) -> Result<RotateResponse, StoreError> {
        self.check()?;
        let fam_key = format!("{}{}", self.keys.families, req.family);
        let rev_key = format!("{}{}", self.keys.revoked, req.family);
        let mut unsure = None;
        for _ in 0..CAS_ATTEMPTS {
            let read = Txn::new().and_then([
                TxnOp::get(fam_key.clone(), None),
                TxnOp::get(rev_key.clone(), None),
                TxnOp::get(self.keys.outage.clone(), None),
            ]);
            let resp = self.txn("rotate", read).await?;
            let ops = resp.op_responses();
            if matches!(ops.get(1), Some(TxnOpResponse::Get(g)) if !g.kvs().is_empty()) {
                return Ok(revoked_answer());
            }
            let outage = match ops.get(2) {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<Outage>(kv.value()).ok()),
                _ => None,
            };
            let now_ms = unix_ms();
            let (family, mod_rev) = match ops.first() {
                Some(TxnOpResponse::Get(g)) => match g.kvs().first() {
                    Some(kv) => (
                        serde_json::from_slice::<FamilyRecord>(kv.value())
                            .ok()
                            .filter(|f| f.expires_at * 1000 > now_ms),
                        kv.mod_revision(),
                    ),
                    None => (None, 0),
                },
                _ => (None, 0),
            };
            let decision = match &family {
                // Unknown (or expired) family: adopted, trusting the
                // proxy's signature check.
                None => Decision::Rotate(FamilyRecord {
                    current: req.successor.clone(),
                    previous: Some(req.presented.clone()),
                    rotated_at_ms: now_ms,
                    iat: req.iat,
                    srv: req.srv.clone(),
                    rgn: req.rgn.clone(),
                    expires_at: req.expires_at,
                }),
                Some(f) if f.current == req.presented => Decision::Rotate(FamilyRecord {
                    current: req.successor.clone(),
                    previous: Some(f.current.clone()),
                    rotated_at_ms: now_ms,
                    iat: req.iat,
                    srv: req.srv.clone(),
                    rgn: req.rgn.clone(),
                    expires_at: f.expires_at.max(req.expires_at),
                }),
                Some(f)
                    if f.previous.as_deref() == Some(req.presented.as_str())
                        && service_ms(f.rotated_at_ms, now_ms, outage)
                            <= u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX) =>
                {
                    return Ok(RotateResponse {
                        outcome: RotateOutcome::Grace,
                        iat: Some(f.iat),
                        srv: Some(f.srv.clone()),
                        rgn: Some(f.rgn.clone()),
                    });
                }
                Some(f) => Decision::Revoke(f.expires_at.max(req.expires_at)),
            };
            let (until, then) = match &decision {
                Decision::Rotate(rec) => (rec.expires_at, None),
                Decision::Revoke(until) => (*until, Some(*until)),
            };
            let lease = self.bucket_lease(until).await?;
            let ops = match &decision {
                Decision::Rotate(rec) => vec![TxnOp::put(
                    fam_key.clone(),
                    serde_json::to_vec(rec).expect("serialising a family record"),
                    Some(PutOptions::new().with_lease(lease)),
                )],
                Decision::Revoke(until) => vec![
                    TxnOp::delete(fam_key.clone(), None),
                    TxnOp::put(
                        rev_key.clone(),
                        serde_json::to_vec(&Revocation { until: *until })
                            .expect("serialising a revocation"),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                ],
            };
            let write = Txn::new()
                .when([
                    Compare::mod_revision(fam_key.clone(), CompareOp::Equal, mod_rev),
                    Compare::create_revision(rev_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then(ops);
            let resp = match self.txn("rotate", write).await {
                Ok(r) => r,
                Err(f) if f.lease_gone => {
                    self.forget_bucket(lease);
                    continue;
                }
                Err(f) => {
                    // The write may have been applied (a timeout, a member
                    // lost with the request in flight). Answering 503 here
                    // would tell the proxy nothing was done: it would hand
                    // the client its old token back, which reads as reuse
                    // once the grace window has passed (a sign-out). Read
                    // again instead: the next round finds this very write
                    // (and answers `grace` with its successor) or not (and
                    // decides afresh).
                    tracing::warn!(family = %req.family, "a rotation's write failed ({}); reading the family again", f.message);
                    unsure = Some(f);
                    continue;
                }
            };
            if !resp.succeeded() {
                continue;
            }
            return Ok(match then {
                None => RotateResponse {
                    outcome: RotateOutcome::Rotated,
                    iat: Some(req.iat),
                    srv: Some(req.srv.clone()),
                    rgn: Some(req.rgn.clone()),
                },
                Some(_) => {
                    tracing::warn!(family = %req.family, "refresh-token reuse detected: family revoked");
                    self.wait_applied(resp.header().map_or(0, |h| h.revision()))
                        .await;
                    revoked_answer()
                }
            });
        }
        Err(match unsure {
            Some(f) => f.into(),
            None => StoreError(format!(
                "the rotation of family {:?} lost {CAS_ATTEMPTS} compare-and-set races in a row",
                req.family
            )),
        })
    }

    pub async fn revoke(&self, family: &str, expires_at: u64) -> Result<(), StoreError> {
        self.check()?;
        let fam_key = format!("{}{family}", self.keys.families);
        let rev_key = format!("{}{family}", self.keys.revoked);
        for _ in 0..CAS_ATTEMPTS {
            let got = self.get("revoke", &fam_key, None).await?;
            let (until, mod_rev) = match got.kvs().first() {
                Some(kv) => (
                    serde_json::from_slice::<FamilyRecord>(kv.value())
                        .map_or(expires_at, |f| f.expires_at.max(expires_at)),
                    kv.mod_revision(),
                ),
                None => (expires_at, 0),
            };
            let lease = self.bucket_lease(until).await?;
            let write = Txn::new()
                .when([Compare::mod_revision(
                    fam_key.clone(),
                    CompareOp::Equal,
                    mod_rev,
                )])
                .and_then([
                    TxnOp::delete(fam_key.clone(), None),
                    TxnOp::put(
                        rev_key.clone(),
                        serde_json::to_vec(&Revocation { until })
                            .expect("serialising a revocation"),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                ]);
            let resp = match self.txn("revoke", write).await {
                Ok(r) => r,
                Err(f) if f.lease_gone => {
                    self.forget_bucket(lease);
                    continue;
                }
                Err(f) => return Err(f.into()),
            };
            if resp.succeeded() {
                self.wait_applied(resp.header().map_or(0, |h| h.revision()))
                    .await;
                return Ok(());
            }
        }
        Err(StoreError(format!(
            "the revocation of family {family:?} lost {CAS_ATTEMPTS} races in a row"
        )))
    }

    /// Keeps the watch running: on any failure (member lost, leader lost,
    /// compaction) it counts a restart, waits a little and resyncs.
    async fn watch_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.sync_and_watch(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    self.synced.store(false, Ordering::Release);
                    self.metrics.set_store_up(false);
                    self.metrics.watch_restarted();
                    tracing::warn!(error = %e, "etcd watch ended; resyncing");
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Reads `reg/`, then follows it with one watch until it fails
    /// (`Err`) or the service stops (`Ok`).
    async fn sync_and_watch(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        self.load_epoch().await?;
        let mut got = self
            .get(
                "sync",
                &self.keys.reg,
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|f| f.message)?;
        let read_rev = got.header().map_or(0, |h| h.revision());
        let kvs = got.take_kvs();
        let newest = kvs.iter().map(|kv| kv.mod_revision()).max().unwrap_or(0);
        let now = Instant::now();
        let mut cache = Cache::new(newest);
        for kv in &kvs {
            cache.apply(
                &self.keys,
                kv.key(),
                Some((kv.value(), kv.lease())),
                kv.mod_revision(),
                now,
            );
        }
        cache.version = newest;
        cache.regions_seen = std::mem::take(&mut self.cache().regions_seen);
        *self.cache() = cache;
        self.applied_tx.send_replace(newest);
        // Replay from just after the newest key, so deletions up to the
        // read are applied and the version matches every other node.
        let mut start = newest + 1;
        loop {
            // The watch covers `meta/` and `reg/` (adjacent in key
            // order): `reg/` is the registry, and the write to
            // `meta/sync` below tells the node when the replay is over.
            let options = WatchOptions::new()
                .with_range(self.keys.watch_end.clone())
                .with_start_revision(start);
            let mut stream = self
                .call("watch", || {
                    let mut watch_client = self.client.watch_client();
                    let key = self.keys.meta.clone();
                    let options = options.clone();
                    async move { watch_client.watch(key, Some(options)).await }
                })
                .await
                .map_err(|f| f.message)?;
            // Events arrive in revision order, so once this marker's
            // revision has been delivered, so has everything before it
            // (etcd 3.4's progress requests do not promise that).
            let marker = Txn::new().and_then([TxnOp::put(self.keys.sync.clone(), "", None)]);
            let caught_up_at = self
                .txn("sync", marker)
                .await
                .map_err(|f| f.message)?
                .header()
                .map_or(read_rev, |h| h.revision());
            let mut applied = start - 1;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    () = stopped(stop) => return Ok(()),
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("the watch stream closed".into()),
                    Err(e) => return Err(format!("watch: {e}")),
                };
                if resp.compact_revision() > 0 {
                    if self.synced.load(Ordering::Acquire) {
                        return Err(format!(
                            "the watch fell behind compaction (revision {})",
                            resp.compact_revision()
                        ));
                    }
                    // History before the read is gone: start the version
                    // at the compaction point (see the module comment).
                    let c = resp.compact_revision();
                    {
                        let mut cache = self.cache();
                        cache.version = cache.version.max(c - 1);
                        cache.floor = cache.floor.max(c - 1);
                    }
                    start = c;
                    break;
                }
                if resp.canceled() {
                    return Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
                }
                if resp.created() && resp.events().is_empty() {
                    continue;
                }
                let events = resp.events();
                if !events.is_empty() {
                    let now = Instant::now();
                    let mut cache = self.cache();
                    for ev in events {
                        let Some(kv) = ev.kv() else { continue };
                        let put = match ev.event_type() {
                            EventType::Put => Some((kv.value(), kv.lease())),
                            EventType::Delete => None,
                        };
                        cache.apply(&self.keys, kv.key(), put, kv.mod_revision(), now);
                        applied = applied.max(kv.mod_revision());
                    }
                    let version = self.as_version(cache.version);
                    self.metrics.set_version(version);
                    self.metrics.set_servers(cache.servers.len());
                    self.publish_live(&mut cache);
                    drop(cache);
                    self.version_tx.send_if_modified(|v| {
                        let moved = *v != version;
                        *v = version;
                        moved
                    });
                }
                self.applied_tx.send_if_modified(|a| {
                    let moved = *a < applied;
                    *a = (*a).max(applied);
                    moved
                });
                if applied >= caught_up_at && !self.synced.load(Ordering::Acquire) {
                    self.mark_synced();
                }
            }
        }
    }

    /// The live-servers gauge per region and the evictions counter, from
    /// this node's copy (every node counts the evictions it watches).
    fn publish_live(&self, cache: &mut Cache) {
        let mut live: BTreeMap<&str, i64> = BTreeMap::new();
        for e in cache.servers.values() {
            let n = live.entry(e.rec.region.as_str()).or_insert(0);
            if e.rec.healthy {
                *n += 1;
            }
        }
        for region in live.keys() {
            if !cache.regions_seen.contains(*region) {
                cache.regions_seen.insert((*region).to_owned());
            }
        }
        for region in &cache.regions_seen {
            self.metrics
                .set_live(region, live.get(region.as_str()).copied().unwrap_or(0));
        }
        self.metrics
            .evicted(std::mem::take(&mut cache.evicted_unreported));
    }

    fn mark_synced(&self) {
        let (version, servers) = {
            let mut c = self.cache();
            self.publish_live(&mut c);
            (self.as_version(c.version), c.servers.len())
        };
        self.metrics.set_version(version);
        self.metrics.set_servers(servers);
        self.version_tx.send_replace(version);
        self.synced.store(true, Ordering::Release);
        self.metrics
            .set_store_up(self.healthy.load(Ordering::Acquire));
        tracing::info!(version, servers, "in sync with etcd");
    }

    /// Checks twice a second that etcd answers a linearizable read (which
    /// needs a leader with quorum), and refreshes the store gauges.
    async fn probe_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut round: u64 = 0;
        let mut failures = 0;
        loop {
            let answered = self
                .get(
                    "probe",
                    &self.keys.reg,
                    Some(GetOptions::new().with_keys_only().with_limit(1)),
                )
                .await
                .is_ok();
            // Before the first "healthy" (so before the node answers a
            // rotation), then every second.
            let healthy_now = self.healthy.load(Ordering::Acquire);
            if answered && (!healthy_now || round.is_multiple_of(2)) {
                self.note_alive().await;
            }
            // Two failures in a row (about a second) before answering 503:
            // one slow answer during a re-election is not an outage.
            failures = if answered { 0 } else { failures + 1 };
            let ok = failures < 2 && (answered || self.healthy.load(Ordering::Acquire));
            let was = self.healthy.swap(ok, Ordering::AcqRel);
            if was != ok {
                if ok {
                    tracing::info!("etcd answers again");
                } else {
                    tracing::warn!("etcd does not answer linearizable reads: answering 503");
                }
            }
            self.metrics
                .set_store_up(ok && self.synced.load(Ordering::Acquire));
            if ok && round.is_multiple_of(10) {
                self.refresh_gauges().await;
            }
            round += 1;
            tokio::select! {
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    /// Writes `alive`; when the previous `alive` is older than
    /// [`OUTAGE_GAP`], no node was up in between: records that as the
    /// last `outage` first (module docs). Best effort: a failure is
    /// logged and tried again next round.
    async fn note_alive(&self) {
        let now = unix_ms();
        let last = match self.get("alive", &self.keys.alive, None).await {
            Ok(r) => r
                .kvs()
                .first()
                .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<u64>().ok()),
            Err(f) => {
                tracing::debug!("reading alive failed: {}", f.message);
                return;
            }
        };
        let gap = u64::try_from(OUTAGE_GAP.as_millis()).unwrap_or(u64::MAX);
        let mut ops = vec![TxnOp::put(self.keys.alive.clone(), now.to_string(), None)];
        if let Some(from) = last.filter(|&t| now.saturating_sub(t) > gap) {
            let outage = Outage { from, to: now };
            tracing::info!(
                from,
                to = now,
                "no discovery node was alive for {} ms: rotations' grace windows do not count that time",
                now - from
            );
            ops.push(TxnOp::put(
                self.keys.outage.clone(),
                serde_json::to_vec(&outage).expect("serialising an outage"),
                None,
            ));
        }
        if let Err(f) = self.txn("alive", Txn::new().and_then(ops)).await {
            tracing::debug!("writing alive failed: {}", f.message);
        }
    }

    async fn refresh_gauges(&self) {
        let (server_leases, revoked) = {
            let c = self.cache();
            let leases: HashSet<i64> = c.servers.values().map(|e| e.lease).collect();
            (leases.len(), c.revoked.len())
        };
        self.metrics.set_store_leases("server", server_leases);
        if let Ok(r) = self
            .get(
                "count",
                &self.keys.families,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        {
            self.metrics
                .set_store_families(usize::try_from(r.count()).unwrap_or(0), revoked);
        }
    }
}

/// A request that never reached a live member: worth trying again.
/// How long [`EtcdStore::call`] keeps trying a request that could not
/// reach a member (within the request timeout).
const UNREACHABLE_RETRY_FOR: Duration = Duration::from_millis(500);

fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // 14 = UNAVAILABLE (connection refused, member shutting down, no
        // leader on that member).
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 14,
        _ => false,
    }
}

/// Resolves when the service stops (or every sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _stopping = stop.wait_for(|s| *s).await.is_ok();
}

enum Decision {
    Rotate(FamilyRecord),
    Revoke(u64),
}

fn revoked_answer() -> RotateResponse {
    RotateResponse {
        outcome: RotateOutcome::Revoked,
        iat: None,
        srv: None,
        rgn: None,
    }
}

/// The first key of a transaction's first `get`: (value, lease, mod
/// revision).
fn first_get(resp: &TxnResponse) -> Option<(Vec<u8>, i64, i64)> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.lease(), kv.mod_revision())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_leaves_out_the_outage() {
        // No outage: wall time.
        assert_eq!(service_ms(1_000, 5_000, None), 4_000);
        // Rotated at 1 s, everything down from 0.5 s (the last `alive`)
        // to 80 s, asked at 82 s: 2 s of service time.
        let o = Outage {
            from: 500,
            to: 80_000,
        };
        assert_eq!(service_ms(1_000, 82_000, Some(o)), 2_000);
        // An outage wholly before the rotation changes nothing.
        assert_eq!(service_ms(90_000, 95_000, Some(o)), 5_000);
        // Asked during the outage's recorded span (a clock step): never
        // below zero.
        assert_eq!(service_ms(1_000, 50_000, Some(o)), 0);
        // Rotated before the outage began: the time up before it counts.
        assert_eq!(service_ms(100, 80_100, Some(o)), 500);
    }
}
