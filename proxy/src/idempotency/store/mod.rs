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
use std::time::{Duration, Instant};

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

/// Identifies one claim: 16 random bytes (a copyable value: no
/// allocation per request; the Redis store writes it in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken([u8; 16]);

impl ClaimToken {
    pub fn random() -> ClaimToken {
        ClaimToken(rand::random())
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

/// The real clock.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
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
        self.origin.elapsed()
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
