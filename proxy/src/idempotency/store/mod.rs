//! Where records live: one async trait, two stores.
//!
//! - [`memory::MemoryStore`]: in this process, bounded by entries and
//!   bytes, the oldest stored answers evicted first; time from a
//!   [`Clock`] so tests drive it.
//! - [`redis::RedisStore`]: shared by the proxies of one region; every
//!   operation is one atomic command or script.
//!
//! A record is either a *claim* (a request holding the key is in flight,
//! identified by its [`ClaimToken`]) or a *completed* answer (opaque
//! bytes: [`super::record::StoredResponse::encode`]). Only the claim's
//! owner can complete or release it, so a request whose claim expired and
//! was taken over cannot overwrite the newer one.

pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::record::Scope;

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// No record: this request now holds the key.
    Claimed,
    /// Another request holds the key.
    InFlight,
    /// A completed answer (encoded record).
    Completed(Bytes),
}

/// A store operation that could not be done. The caller applies
/// `on_store_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("idempotency store unreachable: {0}")]
    Unavailable(String),
    #[error("idempotency store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("idempotency store full of in-flight claims")]
    Full,
    #[error("idempotency store answered something unexpected: {0}")]
    Protocol(String),
}

/// Identifies one claim: 16 bytes (a copyable value: no allocation per
/// request; the Redis store writes it in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken([u8; 16]);

impl ClaimToken {
    /// A token no other claim has: 8 random bytes drawn once per process,
    /// then a counter. Unique across the proxies sharing a store (their
    /// random halves differ) and within one (the counter), which is all a
    /// token is for: it tells the claim's owner from a later claim on the
    /// same scope. It is not a secret (it never leaves the proxy and its
    /// store), so it needs no random number generator per request.
    pub fn fresh() -> ClaimToken {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::LazyLock;
        static PROCESS: LazyLock<[u8; 8]> = LazyLock::new(rand::random);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&*PROCESS);
        t[8..].copy_from_slice(&n.to_be_bytes());
        ClaimToken(t)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex, 32 characters.
    pub fn hex(&self) -> String {
        super::record::hex(&self.0)
    }
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Atomically: with no live record under `scope`, creates a claim owned
    /// by `token` that expires after `in_flight_ttl` and returns `Claimed`;
    /// otherwise returns what is there. Of any number of concurrent claims
    /// on one scope, exactly one gets `Claimed`.
    async fn claim(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        in_flight_ttl: Duration,
    ) -> Result<ClaimResult, StoreError>;

    /// Replaces the claim owned by `token` with the completed `record`,
    /// kept for `ttl`. `Ok(false)`: the claim is no longer this request's
    /// (expired, perhaps taken over), nothing was written.
    async fn complete(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Deletes the claim owned by `token`, so a retry can go through.
    /// `Ok(false)`: it was not this request's any more.
    async fn release(&self, scope: &Scope, token: &ClaimToken) -> Result<bool, StoreError>;

    /// The in-process store, whose operations never wait (see the
    /// `*_unboxed` calls below).
    fn as_memory(&self) -> Option<&memory::MemoryStore> {
        None
    }
}

/// The calls the engine makes: the memory store's operations never wait,
/// so it is called directly rather than through `async_trait`'s boxed
/// future (two heap allocations per keyed request saved on the hot path);
/// any other store through the trait.
impl dyn IdempotencyStore {
    pub async fn claim_unboxed(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        in_flight_ttl: Duration,
    ) -> Result<ClaimResult, StoreError> {
        match self.as_memory() {
            Some(m) => m.claim_now(scope, token, in_flight_ttl),
            None => self.claim(scope, token, in_flight_ttl).await,
        }
    }

    pub async fn complete_unboxed(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self.as_memory() {
            Some(m) => m.complete_now(scope, token, record, ttl),
            None => self.complete(scope, token, record, ttl).await,
        }
    }

    pub async fn release_unboxed(
        &self,
        scope: &Scope,
        token: &ClaimToken,
    ) -> Result<bool, StoreError> {
        match self.as_memory() {
            Some(m) => Ok(m.release_now(scope, token)),
            None => self.release(scope, token).await,
        }
    }
}

/// Monotonic time for the memory store, as a duration since an arbitrary
/// origin.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// The real clock: the kernel's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE`, through `coarsetime`), which moves once per
/// kernel tick (1 to 10 ms) and reads at a fraction of the precise
/// clock's cost. Record lifetimes are seconds to days, so a tick of error
/// is immaterial; two reads per keyed request are saved.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: coarsetime::Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: coarsetime::Instant::now_without_cache_update(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        let since = coarsetime::Instant::now_without_cache_update().duration_since(self.origin);
        Duration::from_millis(since.as_millis())
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.ms.load(Ordering::SeqCst))
    }
}
