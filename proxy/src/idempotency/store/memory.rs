//! The in-process store: a fixed set-associative index and a ring log of
//! answers, under one mutex.
//!
//! The layout is chosen so that a store at its bound (where it lives: at
//! any real rate of keyed writes, the defaults fill within minutes and
//! every new answer then evicts an old one) touches as little cold memory
//! per request as possible:
//!
//! - **Index.** Twice `max_entries` slots (rounded up to a multiple of
//!   [`WAYS`]), allocated once at start, in buckets of eight. A scope's
//!   bucket comes from a per-process randomly seeded `foldhash` of it
//!   (clients choose keys, so the hash stays keyed). Each bucket has one
//!   64-byte line of tags and insertion numbers, read by every lookup;
//!   the slots hold the scope, expiry and the claim token or the answer's
//!   place in the log. A new record goes into a free slot of its bucket
//!   (at `max_entries`, after evicting the store's oldest answer: the
//!   front of its queue, below); in a full bucket (rare: buckets are
//!   half full on average at the bound) it replaces the bucket's *oldest
//!   answer* instead: the line the lookup just read decides it, and the
//!   slot written is the one evicted. Claims are never evicted (that would
//!   let a retry through while the first request is still at the app); a
//!   bucket of eight live claims refuses a ninth with
//!   [`StoreError::Full`].
//! - **Answers** are copied into a ring log of `max_bytes`, allocated
//!   and touched at start (as is the index: resident from the first
//!   request, and no request pays a page fault): no allocation or free
//!   per answer. Writing past the end overwrites the oldest answers, which
//!   are dropped from the index first; a replay copies its answer out.
//! - **Queues.** Answers are listed in log order, which is also expiry
//!   order (they share one lifetime): the front of that queue is what
//!   expires and what the log overwrites next. Claims are listed the same
//!   way; a completed or released claim leaves the front of its queue on
//!   a later request (its bucket line was touched a moment ago), one that
//!   outlives `in_flight_ttl` is dropped there.
//!
//! Eviction is therefore oldest first, except for the insertions that
//! find their bucket full, which evict the oldest answer of those eight.
//! Twice the slots keep those rare: with the index sized for exactly
//! `max_entries`, a store 60% full had already evicted 2.6% of its
//! answers that way (docs/idempotency.md, "Stores").

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ClaimResult, ClaimToken, Clock, IdempotencyStore, StoreError};
use crate::idempotency::record::Scope;

/// Slots per bucket: one 64-byte line of 32-bit tags and insertion numbers.
pub const WAYS: usize = 8;

/// The most records a memory store may be configured for
/// (`idempotency.store.max_entries`): its index, [`INDEX_BYTES_PER_ENTRY`]
/// per record, is allocated at start.
pub const MAX_ENTRIES: usize = 1 << 23;

/// The largest answer log a memory store may be configured for
/// (`idempotency.store.max_bytes`): 16 GiB, allocated and touched at
/// start.
pub const MAX_LOG_BYTES: usize = 16 << 30;

/// Slots per configured record: buckets stay half full on average.
pub const SLOTS_PER_ENTRY: usize = 2;

/// Index bytes per configured record: its slots (64 bytes each) and their
/// share of the bucket lines.
pub const INDEX_BYTES_PER_ENTRY: usize = SLOTS_PER_ENTRY * (64 + 64 / WAYS);

/// In a bucket's `seq`: this slot holds a claim.
const CLAIM: u32 = 1 << 31;
/// Insertion numbers wrap at 2^31; only their order within one bucket
/// matters, and a slot left alone for 2^31 insertions to the store is
/// merely evicted out of turn.
const SEQ_MASK: u32 = CLAIM - 1;

/// One bucket's line: a tag per slot (0: free) in the first half, its
/// insertion number (with [`CLAIM`]) in the second. Plain integers, so
/// that the index is allocated zeroed (free).
type Bucket = [u32; 2 * WAYS];

fn tag(b: &Bucket, w: usize) -> u32 {
    b[w]
}

fn seq(b: &Bucket, w: usize) -> u32 {
    b[WAYS + w]
}

/// One record, 64 bytes: the scope (words 0-3), its expiry in
/// milliseconds (4), then a claim's token (5-6) or an answer's log
/// position (5) and length (7).
type Slot = [u64; 8];
const EXPIRES: usize = 4;
const DATA: usize = 5;
const LEN: usize = 7;

fn words(b: &[u8; 32]) -> [u64; 4] {
    std::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes")))
}

fn token_words(t: &ClaimToken) -> [u64; 2] {
    let b = t.as_bytes();
    std::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes")))
}

/// Entries the answers' queue is allocated for at start: one per answer
/// held, and an eighth more for answers dropped out of turn (a full
/// bucket's, an expired one looked up) whose entries still wait in it.
pub const fn queue_capacity(max_entries: usize) -> usize {
    max_entries + max_entries / 8
}

/// A queued record: where it is, and how to tell it is still the same one
/// (its bucket's tag and insertion number at that slot). 32 bytes.
#[derive(Clone, Copy)]
struct Queued {
    /// Answers: log position; claims: unused.
    pos: u64,
    expires_ms: u64,
    slot: u32,
    tag: u32,
    seq: u32,
    /// Answers: their length, so that dropping one from the queue touches
    /// its bucket line but not its slot; claims: 0.
    len: u32,
}

impl Queued {
    const EMPTY: Queued = Queued {
        pos: 0,
        expires_ms: 0,
        slot: 0,
        tag: 0,
        seq: 0,
        len: 0,
    };
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    /// Keyed with a per-process random seed: clients choose the keys.
    hasher: foldhash::fast::FixedState,
    max_entries: usize,
}

struct Inner {
    buckets: Box<[Bucket]>,
    slots: Box<[Slot]>,
    log: Box<[u8]>,
    /// Bytes ever written to the log (positions are absolute; a byte lives
    /// at `pos % log.len()`).
    head: u64,
    next_seq: u32,
    /// In log (= expiry) order; every held answer is listed once.
    answers: VecDeque<Queued>,
    /// In claim (= expiry) order; every held claim is listed once.
    claims: VecDeque<Queued>,
    records: usize,
    /// Bytes of the answers held.
    bytes: usize,
    /// Answers evicted by a bound before their TTL (ever).
    evicted: u64,
}

/// What the memory store holds, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Claims and answers held now.
    pub records: usize,
    /// Bytes of the answers held (what `max_bytes` bounds).
    pub bytes: usize,
    /// Answers evicted by `max_entries` or `max_bytes` before their TTL,
    /// since start: a retry after its answer was evicted reaches the app
    /// again.
    pub evicted: u64,
}

/// Where a scope's record would be.
#[derive(Clone, Copy)]
struct Probe {
    bucket: usize,
    tag: u32,
    scope: [u64; 4],
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Inner {
    fn find(&self, p: &Probe) -> Option<usize> {
        let b = &self.buckets[p.bucket];
        (0..WAYS)
            .filter(|&w| tag(b, w) == p.tag)
            .map(|w| p.bucket * WAYS + w)
            .find(|&i| self.slots[i][..4] == p.scope)
    }

    fn is_claim(&self, i: usize) -> bool {
        seq(&self.buckets[i / WAYS], i % WAYS) & CLAIM != 0
    }

    fn expires(&self, i: usize) -> u64 {
        self.slots[i][EXPIRES]
    }

    /// Frees slot `i` (which holds a record).
    fn remove(&mut self, i: usize) {
        if !self.is_claim(i) {
            self.bytes -= self.slots[i][LEN] as usize;
        }
        self.free(i);
    }

    /// Frees slot `i`, which holds the answer `q` names (still current).
    fn remove_answer(&mut self, q: &Queued) {
        self.bytes -= q.len as usize;
        self.free(q.slot as usize);
    }

    fn free(&mut self, i: usize) {
        self.buckets[i / WAYS][i % WAYS] = 0;
        self.records -= 1;
    }

    /// Whether `q` still names the record it was queued for.
    fn current(&self, q: &Queued) -> bool {
        let (b, w) = (
            &self.buckets[q.slot as usize / WAYS],
            q.slot as usize % WAYS,
        );
        tag(b, w) == q.tag && seq(b, w) == q.seq
    }

    /// Drops the oldest queued answer if it is still held; true when it
    /// was (and was live: counted as evicted).
    fn pop_answer(&mut self) -> Option<bool> {
        let q = self.answers.pop_front()?;
        if self.current(&q) {
            self.remove_answer(&q);
            self.evicted += 1;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// Drops expired answers, and claims that ended or expired, from the
    /// queue fronts.
    fn expire(&mut self, now_ms: u64) {
        while let Some(q) = self.answers.front().copied() {
            if q.expires_ms > now_ms {
                break;
            }
            self.answers.pop_front();
            if self.current(&q) {
                self.remove_answer(&q);
            }
        }
        while let Some(q) = self.claims.front().copied() {
            if self.current(&q) {
                if q.expires_ms > now_ms {
                    break;
                }
                self.remove(q.slot as usize);
            }
            self.claims.pop_front();
        }
    }

    /// A free slot for a record in bucket `b`: a free way, else the
    /// bucket's oldest answer (evicted), else an expired claim.
    fn place(&mut self, b: usize, now_ms: u64, max_entries: usize) -> Result<usize, StoreError> {
        let line = self.buckets[b];
        if let Some(w) = (0..WAYS).find(|&w| tag(&line, w) == 0) {
            // Room in the bucket (the index has twice the slots); at
            // `max_entries`, the usual case once the store is full, make
            // room store-wide, oldest answer first.
            while self.records >= max_entries {
                if self.pop_answer().is_none() {
                    return Err(StoreError::Full);
                }
            }
            return Ok(b * WAYS + w);
        }
        let now_seq = self.next_seq;
        let oldest = (0..WAYS)
            .filter(|&w| seq(&line, w) & CLAIM == 0)
            .max_by_key(|&w| now_seq.wrapping_sub(seq(&line, w)) & SEQ_MASK);
        if let Some(w) = oldest {
            let i = b * WAYS + w;
            if self.expires(i) > now_ms {
                self.evicted += 1;
            }
            self.remove(i);
            return Ok(i);
        }
        // Eight claims. One outliving `in_flight_ttl` is not yet at its
        // queue's front only when a longer-lived one is ahead of it.
        if let Some(i) = (0..WAYS)
            .map(|w| b * WAYS + w)
            .find(|&i| self.expires(i) <= now_ms)
        {
            self.remove(i);
            return Ok(i);
        }
        Err(StoreError::Full)
    }

    /// Writes `i`'s bucket line for a new record and counts it.
    fn occupy(&mut self, i: usize, tag: u32, claim: bool) -> u32 {
        let seq = self.next_seq | if claim { CLAIM } else { 0 };
        self.next_seq = (self.next_seq + 1) & SEQ_MASK;
        let line = &mut self.buckets[i / WAYS];
        line[i % WAYS] = tag;
        line[WAYS + i % WAYS] = seq;
        self.records += 1;
        seq
    }

    /// Copies `record` into the log after dropping the answers it
    /// overwrites; returns its position. The caller checked it fits.
    fn append(&mut self, record: &[u8]) -> u64 {
        let cap = self.log.len() as u64;
        let len = record.len() as u64;
        let mut start = self.head;
        let off = start % cap;
        if off + len > cap {
            // Never split: skip the log's tail end.
            start += cap - off;
        }
        let end = start + len;
        let keep_from = end.saturating_sub(cap);
        while self.answers.front().is_some_and(|q| q.pos < keep_from) {
            self.pop_answer();
        }
        let off = (start % cap) as usize;
        self.log[off..off + record.len()].copy_from_slice(record);
        self.head = end;
        start
    }

    fn answer(&self, i: usize) -> Bytes {
        let s = &self.slots[i];
        let off = (s[DATA] % self.log.len() as u64) as usize;
        Bytes::copy_from_slice(&self.log[off..off + s[LEN] as usize])
    }

    /// Bounds a queue's length to twice the slots: past that, at least
    /// half its entries name records no longer held.
    fn trim_answers(&mut self) {
        while self.answers.len() > 2 * self.slots.len() {
            self.pop_answer();
        }
    }

    fn trim_claims(&mut self) {
        while self.claims.len() > 2 * self.slots.len() {
            let Some(q) = self.claims.pop_front() else {
                break;
            };
            if self.current(&q) {
                // Still in flight: keep it (its expiry is checked when it
                // is next looked up or reaches the front again).
                self.claims.push_back(q);
            }
        }
    }
}

/// Writes to one element per 4 KiB page of `items`, so that the kernel
/// maps them now. (`black_box` in `write`: a store of zero into memory
/// known to be zeroed could be left out by the compiler.)
fn touch_pages<T>(items: &mut [T], write: impl Fn(&mut T)) {
    let per_page = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    items.iter_mut().step_by(per_page).for_each(write);
}

impl MemoryStore {
    pub fn new(
        max_entries: NonZeroUsize,
        max_bytes: NonZeroUsize,
        clock: Arc<dyn Clock>,
    ) -> MemoryStore {
        let max_entries = max_entries.get().min(MAX_ENTRIES);
        let buckets = (SLOTS_PER_ENTRY * max_entries).div_ceil(WAYS);
        // Zeroed allocations (free slots), which the kernel would map
        // lazily, one page fault on the first request to touch each page
        // (through the whole first lap of the log). Touched here instead:
        // the memory the store is configured for is resident from start,
        // and no request pays for a fault.
        let mut buckets = vec![[0u32; 2 * WAYS]; buckets].into_boxed_slice();
        let mut slots = vec![[0u64; 8]; buckets.len() * WAYS].into_boxed_slice();
        let mut log = vec![0u8; max_bytes.get()].into_boxed_slice();
        touch_pages(&mut buckets, |b| b[0] = std::hint::black_box(0));
        touch_pages(&mut slots, |s| s[0] = std::hint::black_box(0));
        touch_pages(&mut log, |b| *b = std::hint::black_box(0));
        // The answers' queue holds at most one entry per answer held
        // (`max_entries`) plus those of answers dropped out of turn:
        // allocated for that at start, so that filling the store never
        // grows it (a grown `VecDeque` copies every entry, under the
        // mutex: 128 MiB at `MAX_ENTRIES`).
        let mut answers = VecDeque::with_capacity(queue_capacity(max_entries));
        answers.extend(std::iter::repeat_n(Queued::EMPTY, answers.capacity()));
        answers.clear();
        MemoryStore {
            inner: Mutex::new(Inner {
                buckets,
                slots,
                log,
                head: 0,
                next_seq: 0,
                answers,
                claims: VecDeque::new(),
                records: 0,
                bytes: 0,
                evicted: 0,
            }),
            clock,
            hasher: foldhash::fast::FixedState::with_seed(rand::random()),
            max_entries,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections do not panic; if one ever did, the index
        // is still consistent enough to serve (worst case: a wrong count).
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn probe(&self, scope: &Scope, buckets: usize) -> Probe {
        let h = self.hasher.hash_one(scope.0);
        Probe {
            // The high half picks the bucket (a multiply, not a modulo),
            // the low half is the tag; never 0, which marks a free slot.
            bucket: (((h >> 32) * buckets as u64) >> 32) as usize,
            tag: (h as u32) | 1,
            scope: words(&scope.0),
        }
    }

    /// Slots in the index (tests: fixed at start).
    pub fn slots(&self) -> usize {
        self.lock().slots.len()
    }

    /// Entries the answers' queue has room for (tests: fixed at start).
    pub fn queue_room(&self) -> usize {
        self.lock().answers.capacity()
    }

    /// Records, bytes and evictions so far (the metrics' scrape).
    pub fn stats(&self) -> MemoryStats {
        let g = self.lock();
        MemoryStats {
            records: g.records,
            bytes: g.bytes,
            evicted: g.evicted,
        }
    }

    /// Records held now (claims and answers), and their answers' bytes.
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
        let now = millis(self.clock.now());
        let mut g = self.lock();
        // The new key's bucket line is usually not in any cache: read it
        // first, so that the miss overlaps with expiring old records.
        let p = self.probe(scope, g.buckets.len());
        std::hint::black_box(g.buckets[p.bucket][0]);
        g.expire(now);
        if let Some(i) = g.find(&p) {
            if g.expires(i) > now {
                return Ok(if g.is_claim(i) {
                    ClaimResult::InFlight
                } else {
                    ClaimResult::Completed(g.answer(i))
                });
            }
            g.remove(i);
        }
        let i = g.place(p.bucket, now, self.max_entries)?;
        let expires_ms = now.saturating_add(millis(ttl));
        let [t0, t1] = token_words(token);
        let [s0, s1, s2, s3] = p.scope;
        g.slots[i] = [s0, s1, s2, s3, expires_ms, t0, t1, 0];
        let seq = g.occupy(i, p.tag, true);
        g.claims.push_back(Queued {
            pos: 0,
            expires_ms,
            slot: i as u32,
            tag: p.tag,
            seq,
            len: 0,
        });
        g.trim_claims();
        Ok(ClaimResult::Claimed)
    }

    pub(crate) fn complete_now(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = millis(self.clock.now());
        let mut g = self.lock();
        // No `expire` here: an answer takes its claim's slot, so the
        // store holds no more records than before (the next claim
        // expires old ones, and `append` drops what the log overwrites).
        let p = self.probe(scope, g.buckets.len());
        let Some(i) = g.find(&p) else {
            return Ok(false);
        };
        if !g.is_claim(i) {
            return Ok(false);
        }
        if g.expires(i) <= now {
            g.remove(i);
            return Ok(false);
        }
        if g.slots[i][DATA..DATA + 2] != token_words(token) {
            return Ok(false);
        }
        if record.len() > g.log.len() || record.len() > u32::MAX as usize {
            // Larger than the whole store: released, not stored.
            g.remove(i);
            return Ok(false);
        }
        // The claim becomes the answer in the same slot (its queue entry
        // no longer matches and leaves the claims' queue by itself).
        g.remove(i);
        let pos = g.append(&record);
        let expires_ms = now.saturating_add(millis(ttl));
        let [s0, s1, s2, s3] = p.scope;
        g.slots[i] = [s0, s1, s2, s3, expires_ms, pos, 0, record.len() as u64];
        let seq = g.occupy(i, p.tag, false);
        g.bytes += record.len();
        g.answers.push_back(Queued {
            pos,
            expires_ms,
            slot: i as u32,
            tag: p.tag,
            seq,
            len: record.len() as u32,
        });
        g.trim_answers();
        Ok(true)
    }

    pub(crate) fn release_now(&self, scope: &Scope, token: &ClaimToken) -> bool {
        let now = millis(self.clock.now());
        let mut g = self.lock();
        let p = self.probe(scope, g.buckets.len());
        let Some(i) = g.find(&p) else {
            return false;
        };
        if !g.is_claim(i) {
            return false;
        }
        let live = g.expires(i) > now;
        let ours = live && g.slots[i][DATA..DATA + 2] == token_words(token);
        if ours || !live {
            g.remove(i);
        }
        ours
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
