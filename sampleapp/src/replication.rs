//! Asynchronous, lagging replication between the regions of one process.
//!
//! Each write is delivered to every other region's store by its own tokio
//! task after `lag + uniform(0..=jitter)`, so deliveries to one replica can
//! arrive out of order; [`crate::store::Store::apply`] sorts that out by
//! version.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::store::{Event, Order, Store};

pub(crate) struct Replicator {
    stores: Vec<Arc<Store>>,
    lag: Duration,
    jitter: Duration,
    /// Flips to `true` (or is dropped) when the cluster shuts down; events
    /// still in flight are then dropped.
    stop: watch::Receiver<bool>,
}

impl Replicator {
    pub(crate) fn new(
        stores: Vec<Arc<Store>>,
        lag: Duration,
        jitter: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Replicator {
            stores,
            lag,
            jitter,
            stop,
        }
    }

    /// The delay of one delivery: the lag plus a uniform jitter.
    fn delay(&self) -> Duration {
        let jitter_us = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        let extra = if jitter_us == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_us)
        };
        self.lag.saturating_add(Duration::from_micros(extra))
    }

    /// Schedules the delivery of `order` (just written in region `from`) to
    /// every other region.
    pub(crate) fn replicate(&self, from: usize, order: &Order) {
        for (i, store) in self.stores.iter().enumerate() {
            if i == from {
                continue;
            }
            let delay = self.delay();
            let store = Arc::clone(store);
            let event = Event {
                order: order.clone(),
            };
            let mut stop = self.stop.clone();
            store.in_flight();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        store.apply(&event);
                    }
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
                store.delivered();
            });
        }
    }
}
