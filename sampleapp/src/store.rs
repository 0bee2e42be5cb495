//! One region's replica of the order store, and the versioned events that
//! replicate it.
//!
//! Replication is state-based: every write produces the whole new order
//! with a bigger [`Version`], and a replica keeps whichever copy has the
//! highest version. An event that is not newer than what the replica holds
//! (it arrived late, or twice) is ignored and counted as stale, so replicas
//! converge whatever the delivery order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub sku: String,
    pub qty: u32,
}

/// Where an order is in the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Open,
    CheckedOut,
}

/// A replicated order, exactly as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<Item>,
    pub status: OrderStatus,
    /// Write counter of this order: 1 at creation, +1 per write.
    pub version: u64,
    /// Region that made the write this copy reflects; breaks ties between
    /// concurrent writes with the same `version` in different regions.
    pub written_in: String,
}

impl Order {
    /// Total order on writes: the counter first, then the writing region.
    pub fn full_version(&self) -> Version {
        Version {
            counter: self.version,
            region: self.written_in.clone(),
        }
    }
}

/// Version of one write; compared as (counter, region).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub counter: u64,
    pub region: String,
}

/// A replication event: the full state of one order after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub order: Order,
}

/// What a replica did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was newer than the replica's copy and replaced it.
    Applied,
    /// The replica already held this version or a newer one.
    Stale,
}

/// Why a local write was refused; the API maps each to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// This replica has no such order (yet).
    NotFound,
    /// The order is already checked out.
    CheckedOut,
    /// Checkout of an order that has no items in this replica.
    Incomplete,
}

/// Counters of one replica, as `GET /stats` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreCounters {
    /// Orders this replica holds.
    pub orders: u64,
    /// Replication events that replaced an older copy.
    pub applied_events: u64,
    /// Replication events ignored because they were not newer.
    pub stale_events: u64,
    /// Events on their way to this replica, not delivered yet.
    pub pending_replication: u64,
}

/// One region's replica.
#[derive(Debug)]
pub struct Store {
    region: String,
    orders: Mutex<HashMap<String, Order>>,
    applied: AtomicU64,
    stale: AtomicU64,
    pending: AtomicU64,
}

impl Store {
    pub fn new(region: impl Into<String>) -> Self {
        Store {
            region: region.into(),
            orders: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Order>> {
        // A panic while holding the lock cannot leave a half-written order
        // (every write is a single insert), so a poisoned map is still good.
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This replica's copy of an order.
    pub fn get(&self, order_id: &str) -> Option<Order> {
        self.lock().get(order_id).cloned()
    }

    /// Creates a new order at version 1, written in this region.
    pub fn create(&self, order_id: String, user_id: String) -> Order {
        let order = Order {
            order_id: order_id.clone(),
            user_id,
            items: Vec::new(),
            status: OrderStatus::Open,
            version: 1,
            written_in: self.region.clone(),
        };
        self.lock().insert(order_id, order.clone());
        order
    }

    /// Adds an item to this replica's copy of an open order.
    pub fn add_item(&self, order_id: &str, item: Item) -> Result<Order, WriteError> {
        self.update(order_id, |order| {
            if order.status == OrderStatus::CheckedOut {
                return Err(WriteError::CheckedOut);
            }
            order.items.push(item);
            Ok(())
        })
    }

    /// Checks out an open order that has at least one item in this replica.
    pub fn checkout(&self, order_id: &str) -> Result<Order, WriteError> {
        self.update(order_id, |order| {
            if order.status == OrderStatus::CheckedOut {
                return Err(WriteError::CheckedOut);
            }
            if order.items.is_empty() {
                return Err(WriteError::Incomplete);
            }
            order.status = OrderStatus::CheckedOut;
            Ok(())
        })
    }

    fn update(
        &self,
        order_id: &str,
        change: impl FnOnce(&mut Order) -> Result<(), WriteError>,
    ) -> Result<Order, WriteError> {
        let mut orders = self.lock();
        let current = orders.get(order_id).ok_or(WriteError::NotFound)?;
        let mut next = current.clone();
        change(&mut next)?;
        next.version = current.version.saturating_add(1);
        next.written_in.clone_from(&self.region);
        orders.insert(order_id.to_owned(), next.clone());
        Ok(next)
    }

    /// Applies a replication event if it is newer than this replica's copy.
    pub fn apply(&self, event: &Event) -> Applied {
        let mut orders = self.lock();
        let newer = match orders.get(&event.order.order_id) {
            Some(held) => event.order.full_version() > held.full_version(),
            None => true,
        };
        if newer {
            orders.insert(event.order.order_id.clone(), event.order.clone());
            self.applied.fetch_add(1, Ordering::Relaxed);
            Applied::Applied
        } else {
            self.stale.fetch_add(1, Ordering::Relaxed);
            Applied::Stale
        }
    }

    /// Marks one event as on its way here (see [`Store::delivered`]).
    pub(crate) fn in_flight(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks one in-flight event as delivered or dropped at shutdown.
    pub(crate) fn delivered(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> StoreCounters {
        let orders = self.lock().len() as u64;
        StoreCounters {
            orders,
            applied_events: self.applied.load(Ordering::Relaxed),
            stale_events: self.stale.load(Ordering::Relaxed),
            pending_replication: self.pending.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str) -> Item {
        Item {
            sku: sku.into(),
            qty: 1,
        }
    }

    #[test]
    fn workflow_in_one_replica() {
        let s = Store::new("eu");
        let o = s.create("eu-1".into(), "alice".into());
        assert_eq!(o.version, 1);
        assert_eq!(s.checkout("eu-1"), Err(WriteError::Incomplete));
        let o = s.add_item("eu-1", item("a")).unwrap();
        assert_eq!(o.version, 2);
        let o = s.checkout("eu-1").unwrap();
        assert_eq!((o.version, o.status), (3, OrderStatus::CheckedOut));
        assert_eq!(s.add_item("eu-1", item("b")), Err(WriteError::CheckedOut));
        assert_eq!(s.checkout("eu-1"), Err(WriteError::CheckedOut));
        assert_eq!(s.add_item("nope", item("b")), Err(WriteError::NotFound));
        assert_eq!(s.checkout("nope"), Err(WriteError::NotFound));
    }

    #[test]
    fn stale_events_are_ignored_and_counted() {
        let eu = Store::new("eu");
        let us = Store::new("us");
        let v1 = eu.create("eu-1".into(), "alice".into());
        let v2 = eu.add_item("eu-1", item("a")).unwrap();
        // Delivered out of order: the newer one first.
        assert_eq!(us.apply(&Event { order: v2.clone() }), Applied::Applied);
        assert_eq!(us.apply(&Event { order: v1 }), Applied::Stale);
        // A duplicate is stale too.
        assert_eq!(us.apply(&Event { order: v2.clone() }), Applied::Stale);
        assert_eq!(us.get("eu-1"), Some(v2));
        let c = us.counters();
        assert_eq!((c.orders, c.applied_events, c.stale_events), (1, 1, 2));
    }

    #[test]
    fn concurrent_writes_converge_by_region_tiebreak() {
        let eu = Store::new("eu");
        let us = Store::new("us");
        let v1 = eu.create("eu-1".into(), "alice".into());
        us.apply(&Event { order: v1 });
        // Both regions write version 2 at once.
        let from_eu = eu.add_item("eu-1", item("eu")).unwrap();
        let from_us = us.add_item("eu-1", item("us")).unwrap();
        assert_eq!(
            eu.apply(&Event {
                order: from_us.clone()
            }),
            Applied::Applied
        );
        assert_eq!(us.apply(&Event { order: from_eu }), Applied::Stale);
        assert_eq!(eu.get("eu-1"), us.get("eu-1"));
        assert_eq!(eu.get("eu-1"), Some(from_us));
    }

    #[test]
    fn pending_counter() {
        let s = Store::new("eu");
        s.in_flight();
        s.in_flight();
        s.delivered();
        assert_eq!(s.counters().pending_replication, 1);
    }
}
