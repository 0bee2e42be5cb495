//! The in-process store: a map under one mutex, bounded by entries and
//! bytes.
//!
//! Two queues in insertion order, one for claims and one for completed
//! answers, each entry carrying its record's expiry. All claims share one
//! lifetime and all answers another, so insertion order is expiry order:
//! expired records are dropped from the queue fronts, and a front that is
//! still live costs one comparison (no map lookup).
//!
//! When a bound is reached, the oldest *completed* answers are evicted
//! first (losing one only means a late retry is forwarded again). Claims
//! are never evicted: that would let a concurrent retry through while the
//! first request is still at the app. A store full of live claims refuses
//! new ones with [`StoreError::Full`], which the caller treats like any
//! store error.
//!
//! The map's table is sized once, at start, for the bound
//! ([`index_capacity`]): with insertions and removals churning at the
//! bound, a table grown on demand ends up doubled anyway, and each growth
//! on the way rehashes every record under the store's mutex, every
//! request of the worker waiting, and faults in fresh pages (a profile at
//! the default bound caught one growth: about 85 ms of CPU;
//! docs/idempotency.md, "Stores"). Reserved address space is touched only as
//! records land in it.
//!
//! The map hashes scopes with a per-process randomly seeded `foldhash`
//! rather than SipHash: a scope is a SHA-256 output, but its low bits are
//! cheap to grind by choosing keys, so the hasher stays keyed; foldhash is
//! several times cheaper on a 32-byte key.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ClaimResult, ClaimToken, Clock, IdempotencyStore, StoreError};
use crate::idempotency::record::Scope;

/// Bytes counted per record besides its value (key, bookkeeping).
pub const ENTRY_OVERHEAD: usize = 128;

pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    max_entries: usize,
    max_bytes: usize,
}

/// The most records the index is sized for at start (about 100 MB of
/// address space for the table at this size); a larger bound grows the
/// table on demand past it.
pub const MAX_RESERVED_RECORDS: usize = 1 << 19;

/// The capacity the index is created with: twice the most records the
/// bounds allow (`max_entries`, and `max_bytes` at [`ENTRY_OVERHEAD`] per
/// record), so that a store churning at its bound stays at most half full
/// and removals free their slots outright instead of leaving tombstones
/// that force a rehash. Capped at [`MAX_RESERVED_RECORDS`].
pub fn index_capacity(max_entries: usize, max_bytes: usize) -> usize {
    max_entries
        .min(max_bytes / ENTRY_OVERHEAD)
        .min(MAX_RESERVED_RECORDS)
        .saturating_mul(2)
}

/// A queue in insertion (= expiry) order: sequence number to the record's
/// scope and expiry.
type Queue = BTreeMap<u64, (Scope, Duration)>;

struct Inner {
    /// Keyed with a per-process random seed: clients choose the keys.
    map: HashMap<Scope, Slot, foldhash::fast::FixedState>,
    claims: Queue,
    answers: Queue,
    next_seq: u64,
    bytes: usize,
    /// Answers evicted by a bound before their TTL (ever).
    evicted: u64,
}

/// What the memory store holds, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Claims and answers held now.
    pub records: usize,
    /// Their counted bytes (what `max_bytes` bounds).
    pub bytes: usize,
    /// Answers evicted by `max_entries` or `max_bytes` before their TTL,
    /// since start: a retry after its answer was evicted reaches the app
    /// again.
    pub evicted: u64,
}

struct Slot {
    seq: u64,
    expires: Duration,
    state: State,
}

enum State {
    Claim(ClaimToken),
    Answer(Bytes),
}

impl Slot {
    fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.state {
                State::Claim(_) => 0,
                State::Answer(b) => b.len(),
            }
    }
}

impl Inner {
    fn remove(&mut self, scope: &Scope) -> Option<Slot> {
        let slot = self.map.remove(scope)?;
        self.forget(&slot);
        Some(slot)
    }

    /// Drops a slot already taken out of the map from its queue and the
    /// byte count.
    fn forget(&mut self, slot: &Slot) {
        match slot.state {
            State::Claim(_) => self.claims.remove(&slot.seq),
            State::Answer(_) => self.answers.remove(&slot.seq),
        };
        self.bytes -= slot.size();
    }

    fn insert(&mut self, scope: Scope, expires: Duration, state: State) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = Slot {
            seq,
            expires,
            state,
        };
        self.bytes += slot.size();
        match slot.state {
            State::Claim(_) => self.claims.insert(seq, (scope, expires)),
            State::Answer(_) => self.answers.insert(seq, (scope, expires)),
        };
        self.map.insert(scope, slot);
    }

    /// Drops expired records from the queue fronts.
    fn expire(&mut self, now: Duration) {
        for answers in [false, true] {
            loop {
                let queue = if answers {
                    &mut self.answers
                } else {
                    &mut self.claims
                };
                let Some(entry) = queue.first_entry() else {
                    break;
                };
                let (scope, expires) = *entry.get();
                if expires > now {
                    break;
                }
                entry.remove();
                if let Some(slot) = self.map.remove(&scope) {
                    self.bytes -= slot.size();
                }
            }
        }
    }

    /// Evicts the oldest answer; false when there is none.
    fn evict_oldest_answer(&mut self) -> bool {
        let Some((_, (scope, _))) = self.answers.pop_first() else {
            return false;
        };
        if let Some(slot) = self.map.remove(&scope) {
            self.bytes -= slot.size();
        }
        self.evicted += 1;
        true
    }

    /// The live slot under `scope`, dropping it if expired.
    fn live(&mut self, scope: &Scope, now: Duration) -> Option<&Slot> {
        if self.map.get(scope).is_some_and(|s| s.expires <= now) {
            self.remove(scope);
        }
        self.map.get(scope)
    }
}

impl MemoryStore {
    pub fn new(
        max_entries: NonZeroUsize,
        max_bytes: NonZeroUsize,
        clock: Arc<dyn Clock>,
    ) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity_and_hasher(
                    index_capacity(max_entries.get(), max_bytes.get()),
                    foldhash::fast::FixedState::with_seed(rand::random()),
                ),
                claims: Queue::new(),
                answers: Queue::new(),
                next_seq: 0,
                bytes: 0,
                evicted: 0,
            }),
            clock,
            max_entries: max_entries.get(),
            max_bytes: max_bytes.get(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections do not panic; if one ever did, the map
        // is still consistent enough to serve (worst case: a wrong count).
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// How many records the index holds before it must grow (tests: the
    /// table is not reallocated while the store churns at its bound).
    pub fn table_capacity(&self) -> usize {
        self.lock().map.capacity()
    }

    /// Records, bytes and evictions so far (the metrics' scrape).
    pub fn stats(&self) -> MemoryStats {
        let g = self.lock();
        MemoryStats {
            records: g.map.len(),
            bytes: g.bytes,
            evicted: g.evicted,
        }
    }

    /// Records held now (claims and answers), and their counted bytes.
    pub fn usage(&self) -> (usize, usize) {
        let s = self.stats();
        (s.records, s.bytes)
    }

    pub(crate) fn claim_now(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        ttl: Duration,
    ) -> Result<ClaimResult, StoreError> {
        let now = self.clock.now();
        let mut g = self.lock();
        g.expire(now);
        match g.live(scope, now) {
            Some(Slot {
                state: State::Claim(_),
                ..
            }) => return Ok(ClaimResult::InFlight),
            Some(Slot {
                state: State::Answer(b),
                ..
            }) => return Ok(ClaimResult::Completed(b.clone())),
            None => {}
        }
        while g.map.len() >= self.max_entries || g.bytes + ENTRY_OVERHEAD > self.max_bytes {
            if !g.evict_oldest_answer() {
                return Err(StoreError::Full);
            }
        }
        g.insert(*scope, now + ttl, State::Claim(*token));
        Ok(ClaimResult::Claimed)
    }

    pub(crate) fn complete_now(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut g = self.lock();
        g.expire(now);
        // One lookup: take the slot out, and put it back in the rare case
        // it is not this request's live claim.
        let Some(slot) = g.map.remove(scope) else {
            return Ok(false);
        };
        let ours = slot.expires > now && matches!(&slot.state, State::Claim(t) if t == token);
        if !ours {
            if slot.expires > now {
                g.map.insert(*scope, slot);
            } else {
                g.forget(&slot);
            }
            return Ok(false);
        }
        g.forget(&slot);
        let size = ENTRY_OVERHEAD + record.len();
        if size > self.max_bytes {
            // Larger than the whole store: released, not stored.
            return Ok(false);
        }
        while g.bytes + size > self.max_bytes || g.map.len() >= self.max_entries {
            if !g.evict_oldest_answer() {
                // Only live claims left and no room: released.
                return Ok(false);
            }
        }
        g.insert(*scope, now + ttl, State::Answer(record));
        Ok(true)
    }

    pub(crate) fn release_now(&self, scope: &Scope, token: &ClaimToken) -> bool {
        let now = self.clock.now();
        let mut g = self.lock();
        match g.live(scope, now) {
            Some(Slot {
                state: State::Claim(t),
                ..
            }) if t == token => {
                g.remove(scope);
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        in_flight_ttl: Duration,
    ) -> Result<ClaimResult, StoreError> {
        self.claim_now(scope, token, in_flight_ttl)
    }

    async fn complete(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.complete_now(scope, token, record, ttl)
    }

    async fn release(&self, scope: &Scope, token: &ClaimToken) -> Result<bool, StoreError> {
        Ok(self.release_now(scope, token))
    }

    fn as_memory(&self) -> Option<&MemoryStore> {
        Some(self)
    }
}
