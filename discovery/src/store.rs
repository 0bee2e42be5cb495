//! Where discovery keeps its state: the registry, drain marks and refresh
//! families (docs/design.md §6, §6a).
//!
//! - [`Store::Memory`], the embedded default: one process, the
//!   [`Registry`] and [`Families`] in memory, lost on restart (proxies keep
//!   their last good snapshot through it, and discovery warms up).
//! - [`Store::Etcd`]: any number of stateless discovery nodes over one etcd
//!   cluster; see [`etcd`] for the key layout, the version rule and the
//!   transactions.
//!
//! Both answer the same questions with the same wire shapes, so the HTTP
//! layer does not know which one it talks to. Only the etcd store can be
//! unavailable ([`StoreError`]: no quorum, unreachable, not synced yet);
//! the HTTP layer turns that into a 503 that proxies treat like
//! "discovery down".

pub mod etcd;

use std::sync::Arc;
use std::time::Duration;

use tether_protocol::delta::Delta;
use tether_protocol::wire::{Heartbeat, RotateRequest, RotateResponse, ServerEntry};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::families::Families;
use crate::metrics::Metrics;
use crate::registry::{HeartbeatRejected, Listing, Registry};

/// The store cannot answer right now; the detail says why, for the
/// operator reading the 503 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Why a heartbeat was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error(transparent)]
    Rejected(#[from] HeartbeatRejected),
    #[error(transparent)]
    Unavailable(#[from] StoreError),
}

/// The in-memory store.
pub struct Memory {
    pub registry: Registry,
    pub families: Families,
}

// One `Store` per service, never moved after start: the size difference
// between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    Memory(Memory),
    Etcd(Arc<etcd::EtcdStore>),
}

impl Store {
    pub fn memory(ttl: Duration, grace: Duration, metrics: Arc<Metrics>) -> Store {
        metrics.set_store_up(true);
        Store::Memory(Memory {
            registry: Registry::new(ttl, crate::registry::initial_version(), metrics),
            families: Families::new(grace),
        })
    }

    /// A server silent this long is evicted.
    pub fn ttl(&self) -> Duration {
        match self {
            Store::Memory(m) => m.registry.ttl(),
            Store::Etcd(e) => e.ttl(),
        }
    }

    /// True for the in-memory store, which starts empty and so warms up.
    pub fn warms_up(&self) -> bool {
        matches!(self, Store::Memory(_))
    }

    /// Records a heartbeat; the registry version after it.
    pub async fn heartbeat(&self, hb: Heartbeat, now: Instant) -> Result<u64, HeartbeatError> {
        match self {
            Store::Memory(m) => Ok(m.registry.heartbeat(hb, now)?),
            Store::Etcd(e) => e.heartbeat(hb, now).await,
        }
    }

    /// The version as of `now`.
    pub fn current_version(&self, now: Instant) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.registry.current_version(now)),
            Store::Etcd(e) => e.current_version(),
        }
    }

    /// A receiver that sees every later version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            Store::Memory(m) => m.registry.subscribe(),
            Store::Etcd(e) => e.subscribe(),
        }
    }

    /// The `GET /v1/servers` body.
    pub fn listing(&self, now: Instant) -> Result<Listing, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.registry.listing(now)),
            Store::Etcd(e) => e.listing(now),
        }
    }

    /// The `GET /v1/servers?since=` answer.
    pub fn delta(&self, since: u64, now: Instant) -> Result<Delta, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.registry.delta(since, now)),
            Store::Etcd(e) => e.delta(since, now),
        }
    }

    /// Sets or clears the operator's drain mark; `None` when no live
    /// server has that id.
    pub async fn set_admin_drain(
        &self,
        id: &str,
        drain: bool,
        now: Instant,
    ) -> Result<Option<ServerEntry>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.registry.set_admin_drain(id, drain, now)),
            Store::Etcd(e) => e.set_admin_drain(id, drain, now).await,
        }
    }

    /// The refresh-token compare-and-set (see `families.rs`). A family
    /// revoked here is listed from the next version on.
    pub async fn rotate(
        &self,
        req: &RotateRequest,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<RotateResponse, StoreError> {
        match self {
            Store::Memory(m) => {
                let (answer, revoked_changed) = m.families.rotate(req, now);
                if revoked_changed {
                    m.registry.set_revoked_families(m.families.revoked());
                }
                let (live, revoked) = m.families.counts();
                metrics.set_store_families(live, revoked);
                Ok(answer)
            }
            Store::Etcd(e) => e.rotate(req).await,
        }
    }

    /// Revokes a family (logout) until `expires_at` (Unix seconds) at
    /// least.
    pub async fn revoke(
        &self,
        family: &str,
        expires_at: u64,
        metrics: &Metrics,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.families.revoke(family, expires_at);
                m.registry.set_revoked_families(m.families.revoked());
                let (live, revoked) = m.families.counts();
                metrics.set_store_families(live, revoked);
                Ok(())
            }
            Store::Etcd(e) => e.revoke(family, expires_at).await,
        }
    }
}
