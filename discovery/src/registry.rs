//! The in-memory registry: which servers are alive, at which version.
//!
//! One mutex guards a `BTreeMap` keyed by server id, so a listing walks the
//! servers already sorted by id, and a heartbeat is an O(log n) look-up.
//! Critical sections are short (a heartbeat touches one entry); the longest
//! is building a listing, which copies pre-serialised bytes (see
//! [`Entry::head`]) and formats one integer per server.
//!
//! Every method takes `now` instead of reading a clock, so tests drive time
//! by hand.
//!
//! **Versioning.** The version starts at the Unix time in microseconds when
//! the process started and grows by one per *material* change: a server
//! added or evicted, or its url, region, healthy or effective draining flag
//! changing, or its load changing materially (see [`load_changed_materially`]).
//! A restart therefore continues above any version the previous process
//! handed out, unless it made more than a million changes per second of
//! uptime. Heartbeats that change nothing material only refresh
//! `lastSeen` (and store the new load), so steady heartbeats do not churn
//! the version and wake every long-poll.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tether_protocol::delta::Delta;
use tether_protocol::wire::{Heartbeat, ServerEntry, Snapshot};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// True when a load report moves far enough to matter for placement: by
/// more than 0.5 in absolute terms *and* by more than 10% of the old value.
/// Smaller moves are noise (the load is a mean of requests in flight) and
/// would otherwise bump the version on nearly every heartbeat.
pub fn load_changed_materially(old: f64, new: f64) -> bool {
    let delta = (new - old).abs();
    delta > 0.5 && delta > 0.1 * old
}

/// The registry's version at process start: Unix time in microseconds, so
/// versions keep increasing across a restart.
pub fn initial_version() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    u64::try_from(micros).unwrap_or(u64::MAX / 2)
}

/// A heartbeat the registry refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatRejected {
    /// A live server already holds the id with another URL.
    #[error("server id {id:?} is held by a live server at {url}")]
    IdConflict { id: String, url: String },
}

/// What a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub evicted: usize,
    /// When the next server would expire if it stays silent; `None` when the
    /// registry is empty.
    pub next_expiry: Option<Instant>,
}

/// A `GET /v1/servers` body at one version.
#[derive(Debug, Clone)]
pub struct Listing {
    pub version: u64,
    /// The JSON of a [`Snapshot`].
    pub body: Vec<u8>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    ttl: Duration,
    /// Publishes the version after each change; long-polls wait on it.
    version_tx: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

struct Inner {
    servers: BTreeMap<String, Entry>,
    version: u64,
    /// Healthy servers per region, kept in step with `servers` so the
    /// gauge is updated per change rather than recounted.
    live_by_region: HashMap<String, i64>,
    /// No server expires before this instant, so reads skip the eviction
    /// scan until then. A lower bound: refreshes only push deadlines later,
    /// and a new server's deadline is later than every existing one.
    no_expiry_before: Option<Instant>,
    /// Length of the last listing, to size the next one's buffer.
    listing_len_hint: usize,
    /// Revoked refresh families, sorted; listed so every proxy refuses
    /// their tokens (see `families.rs`).
    revoked_families: Vec<String>,
    /// The version at which each revoked family was first listed, for
    /// deltas.
    revoked_at: HashMap<String, u64>,
    /// Servers removed, with the version that removed them, oldest first;
    /// at most [`REMOVED_LOG`] of them.
    removed: VecDeque<(u64, String)>,
    /// The oldest `since` a delta can be answered for: the start version,
    /// raised whenever the removal log forgets an entry.
    delta_floor: u64,
}

/// Removals remembered for deltas. A proxy more than this many removals
/// behind gets a full snapshot instead.
pub const REMOVED_LOG: usize = 16_384;

struct Entry {
    region: String,
    url: String,
    load: f64,
    healthy: bool,
    /// What the server itself reported.
    reported_draining: bool,
    /// Set by an operator; sticky for the life of the entry (a heartbeat
    /// cannot undo it, only `DELETE /v1/servers/{id}/drain` or eviction).
    admin_drain: bool,
    last_seen: Instant,
    /// The version at which something listed about this entry last
    /// changed (for deltas).
    changed_at: u64,
    /// This entry's listing JSON up to and including `"lastSeenMs":`,
    /// rebuilt whenever a stored value changes, so a listing only appends
    /// the age and a closing brace per server.
    head: Vec<u8>,
}

impl Entry {
    fn draining(&self) -> bool {
        self.reported_draining || self.admin_drain
    }

    fn deadline(&self, ttl: Duration) -> Instant {
        self.last_seen + ttl
    }

    fn expired(&self, ttl: Duration, now: Instant) -> bool {
        now >= self.deadline(ttl)
    }

    fn rebuild_head(&mut self, id: &str) {
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
            region: &self.region,
            url: &self.url,
            load: self.load,
            healthy: self.healthy,
            draining: self.draining(),
        };
        self.head.clear();
        // Serialising strs, an f64 and bools into a Vec cannot fail: the
        // only error sources are I/O (a Vec never fails a write) and
        // non-string map keys (there are none).
        serde_json::to_writer(&mut self.head, &head)
            .expect("serialising a server entry into a Vec");
        self.head.pop(); // the closing brace; the listing appends it after the age
        self.head.extend_from_slice(b",\"lastSeenMs\":");
    }

    fn to_wire(&self, id: &str, now: Instant) -> ServerEntry {
        ServerEntry {
            id: id.to_owned(),
            region: self.region.clone(),
            url: self.url.clone(),
            load: self.load,
            healthy: self.healthy,
            draining: self.draining(),
            last_seen_ms: age_ms(self.last_seen, now),
        }
    }
}

fn age_ms(last_seen: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(last_seen).as_millis()).unwrap_or(u64::MAX)
}

impl Registry {
    /// An empty registry at `initial_version`, evicting after `ttl`.
    pub fn new(ttl: Duration, initial_version: u64, metrics: Arc<Metrics>) -> Registry {
        let (version_tx, _) = watch::channel(initial_version);
        metrics.set_version(initial_version);
        metrics.set_servers(0);
        Registry {
            inner: Mutex::new(Inner {
                servers: BTreeMap::new(),
                version: initial_version,
                live_by_region: HashMap::new(),
                no_expiry_before: None,
                listing_len_hint: 64,
                revoked_families: Vec::new(),
                revoked_at: HashMap::new(),
                removed: VecDeque::new(),
                delta_floor: initial_version,
            }),
            ttl,
            version_tx,
            metrics,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something ever did, the
        // map is still consistent entry by entry, and refusing every later
        // request would be worse than serving it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current version. Does not evict; pair with [`Registry::sweep`].
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The version as of `now`: expired servers are evicted first, so a
    /// client comparing ETags never holds on to a listing with a dead server.
    pub fn current_version(&self, now: Instant) -> u64 {
        let mut g = self.lock();
        self.evict_expired(&mut g, now);
        g.version
    }

    /// A receiver that sees every later version (the current one is marked
    /// seen).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Applies a heartbeat (already validated) received at `now`, and
    /// returns the version after it.
    pub fn heartbeat(&self, hb: Heartbeat, now: Instant) -> Result<u64, HeartbeatRejected> {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut changed = false;
        // An entry past its TTL is gone even if no sweep has removed it yet,
        // so its id is free for anyone.
        if inner
            .servers
            .get(&hb.id)
            .is_some_and(|e| e.expired(self.ttl, now))
        {
            self.remove(inner, &hb.id);
            let at = inner.version + 1;
            self.log_removal(inner, at, hb.id.clone());
            self.metrics.evicted(1);
            changed = true;
        }
        match inner.servers.get_mut(&hb.id) {
            Some(e) if e.url != hb.url => {
                return Err(HeartbeatRejected::IdConflict {
                    id: hb.id,
                    url: e.url.clone(),
                });
            }
            Some(e) => {
                let was_draining = e.draining();
                let material = e.region != hb.region
                    || e.healthy != hb.healthy
                    || was_draining != (hb.draining || e.admin_drain)
                    || load_changed_materially(e.load, hb.load);
                let any = material
                    || e.load.to_bits() != hb.load.to_bits()
                    || e.reported_draining != hb.draining;
                let live_move = (e.region != hb.region || e.healthy != hb.healthy).then(|| {
                    (
                        (e.region.clone(), e.healthy),
                        (hb.region.clone(), hb.healthy),
                    )
                });
                e.last_seen = now;
                if any {
                    e.region = hb.region;
                    e.load = hb.load;
                    e.healthy = hb.healthy;
                    e.reported_draining = hb.draining;
                    e.rebuild_head(&hb.id);
                }
                if material {
                    e.changed_at = inner.version + 1;
                }
                if let Some(((old_region, old_healthy), (new_region, new_healthy))) = live_move {
                    if old_healthy {
                        self.adjust_live(inner, &old_region, -1);
                    }
                    if new_healthy {
                        self.adjust_live(inner, &new_region, 1);
                    }
                }
                changed |= material;
            }
            None => {
                let mut e = Entry {
                    region: hb.region,
                    url: hb.url,
                    load: hb.load,
                    healthy: hb.healthy,
                    reported_draining: hb.draining,
                    admin_drain: false,
                    last_seen: now,
                    changed_at: inner.version + 1,
                    head: Vec::with_capacity(160),
                };
                e.rebuild_head(&hb.id);
                if e.healthy {
                    let region = e.region.clone();
                    self.adjust_live(inner, &region, 1);
                }
                if inner.servers.is_empty() {
                    inner.no_expiry_before = Some(e.deadline(self.ttl));
                }
                tracing::info!(server = %hb.id, region = %e.region, url = %e.url, "registered");
                inner.servers.insert(hb.id, e);
                changed = true;
            }
        }
        if changed {
            self.bump(inner);
        }
        Ok(inner.version)
    }

    /// Sets or clears the operator's drain mark. `None` when no live server
    /// has that id.
    pub fn set_admin_drain(&self, id: &str, drain: bool, now: Instant) -> Option<ServerEntry> {
        let mut g = self.lock();
        let inner = &mut *g;
        self.evict_expired(inner, now);
        let e = inner.servers.get_mut(id)?;
        let was = e.draining();
        e.admin_drain = drain;
        let changed = was != e.draining();
        if changed {
            e.rebuild_head(id);
            e.changed_at = inner.version + 1;
        }
        let entry = e.to_wire(id, now);
        if changed {
            self.bump(inner);
        }
        Some(entry)
    }

    /// Evicts every server silent for the TTL.
    pub fn sweep(&self, now: Instant) -> Sweep {
        let mut g = self.lock();
        let evicted = self.evict_expired(&mut g, now);
        Sweep {
            evicted,
            next_expiry: g.no_expiry_before,
        }
    }

    /// The `GET /v1/servers` body as of `now` (expired servers evicted
    /// first, so a listing never shows one).
    pub fn listing(&self, now: Instant) -> Listing {
        let mut g = self.lock();
        let inner = &mut *g;
        self.evict_expired(inner, now);
        let mut body = Vec::with_capacity(inner.listing_len_hint);
        let mut num = itoa::Buffer::new();
        body.extend_from_slice(b"{\"version\":");
        body.extend_from_slice(num.format(inner.version).as_bytes());
        body.extend_from_slice(b",\"servers\":[");
        for (i, e) in inner.servers.values().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.head);
            body.extend_from_slice(num.format(age_ms(e.last_seen, now)).as_bytes());
            body.push(b'}');
        }
        body.push(b']');
        if !inner.revoked_families.is_empty() {
            body.extend_from_slice(b",\"revokedFamilies\":");
            // Family ids are [A-Za-z0-9_-] (checked on the way in), so
            // serialising them cannot fail.
            body.extend_from_slice(
                &serde_json::to_vec(&inner.revoked_families).unwrap_or_else(|_| b"[]".to_vec()),
            );
        }
        body.push(b'}');
        // Ages grow a digit now and then; a little slack avoids a regrowth.
        inner.listing_len_hint = body.len() + body.len() / 64 + 64;
        Listing {
            version: inner.version,
            body,
        }
    }

    /// The registry as typed wire values (for tests and tools; the HTTP
    /// path uses [`Registry::listing`]).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut g = self.lock();
        self.evict_expired(&mut g, now);
        Snapshot {
            version: g.version,
            servers: g.servers.iter().map(|(id, e)| e.to_wire(id, now)).collect(),
            revoked_families: g.revoked_families.clone(),
        }
    }

    /// Replaces the list of revoked refresh families; bumps the version
    /// (waking every long-poll) when it changed.
    pub fn set_revoked_families(&self, families: Vec<String>) {
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.revoked_families != families {
            let next = inner.version + 1;
            for f in &families {
                inner.revoked_at.entry(f.clone()).or_insert(next);
            }
            inner
                .revoked_at
                .retain(|f, _| families.binary_search(f).is_ok());
            inner.revoked_families = families;
            self.bump(inner);
        }
    }

    fn evict_expired(&self, inner: &mut Inner, now: Instant) -> usize {
        if inner.no_expiry_before.is_none_or(|t| now < t) {
            return 0;
        }
        let ttl = self.ttl;
        let expired: Vec<String> = inner
            .servers
            .iter()
            .filter(|(_, e)| e.expired(ttl, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::info!(server = %id, ttl_ms = ttl.as_millis(), "evicted: no heartbeat within the TTL");
            self.remove(inner, id);
        }
        inner.no_expiry_before = inner.servers.values().map(|e| e.deadline(ttl)).min();
        let n = expired.len();
        if n > 0 {
            self.metrics.evicted(n as u64);
            // One version step per evicted server, as if each left alone.
            inner.version += n as u64 - 1;
            let at = inner.version + 1;
            for id in expired {
                self.log_removal(inner, at, id);
            }
            self.bump(inner);
        }
        n
    }

    fn log_removal(&self, inner: &mut Inner, at: u64, id: String) {
        inner.removed.push_back((at, id));
        while inner.removed.len() > REMOVED_LOG {
            if let Some((v, _)) = inner.removed.pop_front() {
                // A `since` below `v` may have missed this removal.
                inner.delta_floor = inner.delta_floor.max(v);
            }
        }
    }

    /// What changed after `since`, as of `now` (expired servers evicted
    /// first); the whole registry (`full`) when `since` is newer than the
    /// current version or older than the change log reaches.
    pub fn delta(&self, since: u64, now: Instant) -> Delta {
        let mut g = self.lock();
        let inner = &mut *g;
        self.evict_expired(inner, now);
        if since > inner.version || since < inner.delta_floor {
            return Delta {
                version: inner.version,
                full: true,
                changed: inner
                    .servers
                    .iter()
                    .map(|(id, e)| e.to_wire(id, now))
                    .collect(),
                removed: Vec::new(),
                revoked_families: inner.revoked_families.clone(),
            };
        }
        let changed = inner
            .servers
            .iter()
            .filter(|(_, e)| e.changed_at > since)
            .map(|(id, e)| e.to_wire(id, now))
            .collect();
        let mut removed: Vec<String> = inner
            .removed
            .iter()
            .rev()
            .take_while(|(v, _)| *v > since)
            .filter(|(_, id)| !inner.servers.contains_key(id))
            .map(|(_, id)| id.clone())
            .collect();
        removed.sort();
        removed.dedup();
        let revoked_families = inner
            .revoked_families
            .iter()
            .filter(|f| inner.revoked_at.get(*f).is_some_and(|v| *v > since))
            .cloned()
            .collect();
        Delta {
            version: inner.version,
            full: false,
            changed,
            removed,
            revoked_families,
        }
    }

    fn remove(&self, inner: &mut Inner, id: &str) {
        if let Some(e) = inner.servers.remove(id) {
            if e.healthy {
                self.adjust_live(inner, &e.region, -1);
            }
        }
    }

    fn adjust_live(&self, inner: &mut Inner, region: &str, delta: i64) {
        let n = inner.live_by_region.entry(region.to_owned()).or_insert(0);
        *n += delta;
        self.metrics.set_live(region, *n);
        if *n <= 0 {
            // The gauge stays at 0; the map forgets the region so a churn of
            // made-up regions cannot grow it.
            inner.live_by_region.remove(region);
        }
    }

    fn bump(&self, inner: &mut Inner) {
        inner.version += 1;
        self.metrics.set_version(inner.version);
        self.metrics.set_servers(inner.servers.len());
        // Sent under the lock so receivers never see versions out of order.
        self.version_tx.send_replace(inner.version);
    }
}

#[cfg(test)]
mod tests;
