//! Idempotency metrics, registered on the proxy's registry.
//!
//! Names are given without the `tether_proxy_` namespace: the proxy's
//! registry (`crate::metrics::Metrics`) adds it, so the exposition shows
//! `tether_proxy_idempotency_total{outcome=…}` and
//! `tether_proxy_idempotency_store_seconds{op=…}`. Every label is
//! initialised at 0 and resolved once, so counting is one atomic add.
//! The memory store's fill ([`MemoryStoreCollector`]) is read at scrape
//! time, costing requests nothing.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::store::memory::MemoryStore;

/// How an idempotency-covered request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer was stored for replay.
    Stored,
    /// A stored answer was replayed; the app was not called.
    Replayed,
    /// `409`: the key was in flight.
    Conflict409,
    /// `422`: the key was used for another request.
    Mismatch422,
    /// `400`: no key on a `required_prefixes` path.
    Missing400,
    /// `400`: the key did not parse.
    Malformed400,
    /// The store failed (any operation); `on_store_error` applied.
    StoreError,
    /// Forwarded but not stored (5xx, excluded status, too large, cut
    /// off, claim lost): the claim was released.
    NotStored,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Stored,
        Outcome::Replayed,
        Outcome::Conflict409,
        Outcome::Mismatch422,
        Outcome::Missing400,
        Outcome::Malformed400,
        Outcome::StoreError,
        Outcome::NotStored,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Replayed => "replayed",
            Outcome::Conflict409 => "conflict_409",
            Outcome::Mismatch422 => "mismatch_422",
            Outcome::Missing400 => "missing_400",
            Outcome::Malformed400 => "malformed_400",
            Outcome::StoreError => "store_error",
            Outcome::NotStored => "not_stored",
        }
    }
}

/// A store operation, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Claim,
    Complete,
    Release,
}

#[derive(Clone)]
pub struct IdempotencyMetrics {
    outcomes: Vec<IntCounter>,
    claim: Histogram,
    complete: Histogram,
    release: Histogram,
}

impl IdempotencyMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<IdempotencyMetrics, prometheus::Error> {
        let (m, outcomes, seconds) = IdempotencyMetrics::build()?;
        registry.register(Box::new(outcomes))?;
        registry.register(Box::new(seconds))?;
        Ok(m)
    }

    /// Metrics that no registry exposes (tests).
    pub fn unregistered() -> Result<IdempotencyMetrics, prometheus::Error> {
        IdempotencyMetrics::build().map(|(m, _, _)| m)
    }

    fn build() -> Result<(IdempotencyMetrics, IntCounterVec, HistogramVec), prometheus::Error> {
        let outcomes_vec = IntCounterVec::new(
            Opts::new("idempotency_total", "Idempotency-Key requests by outcome"),
            &["outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "idempotency_store_seconds",
                "Idempotency store operation latency, by operation",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0,
            ]),
            &["op"],
        )?;
        let outcomes = Outcome::ALL
            .iter()
            .map(|o| outcomes_vec.with_label_values(&[o.label()]))
            .collect();
        let m = IdempotencyMetrics {
            outcomes,
            claim: seconds.with_label_values(&["claim"]),
            complete: seconds.with_label_values(&["complete"]),
            release: seconds.with_label_values(&["release"]),
        };
        Ok((m, outcomes_vec, seconds))
    }

    pub fn outcome(&self, o: Outcome) {
        // Index matches Outcome::ALL by construction.
        if let Some(c) = self.outcomes.get(o as usize) {
            c.inc();
        }
    }

    /// The count for one outcome (tests, diagnostics).
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes.get(o as usize).map_or(0, |c| c.get())
    }

    pub fn observe(&self, op: Op, seconds: f64) {
        self.histogram(op).observe(seconds);
    }

    /// How many calls of `op` were timed (tests, diagnostics).
    pub fn observed(&self, op: Op) -> u64 {
        self.histogram(op).get_sample_count()
    }

    fn histogram(&self, op: Op) -> &Histogram {
        match op {
            Op::Claim => &self.claim,
            Op::Complete => &self.complete,
            Op::Release => &self.release,
        }
    }
}

/// The memory store's records, bytes and evictions, read from the store
/// when `/metrics` is scraped: `idempotency_memory_records`,
/// `idempotency_memory_bytes` (what `max_bytes` bounds) and
/// `idempotency_memory_evicted_total` (answers dropped by a bound before
/// their TTL: a retry after that reaches the app again, so a rising count
/// says the bounds are too small for the traffic and `ttl`).
pub struct MemoryStoreCollector {
    store: Arc<MemoryStore>,
    records: IntGauge,
    bytes: IntGauge,
    evicted: IntCounter,
    /// Two scrapes at once must not both add the same evictions.
    scrape: Mutex<()>,
}

impl MemoryStoreCollector {
    pub fn new(store: Arc<MemoryStore>) -> Result<MemoryStoreCollector, prometheus::Error> {
        Ok(MemoryStoreCollector {
            store,
            records: IntGauge::new(
                "idempotency_memory_records",
                "Records (claims and stored answers) held by the in-process idempotency store",
            )?,
            bytes: IntGauge::new(
                "idempotency_memory_bytes",
                "Bytes counted against idempotency.store.max_bytes",
            )?,
            evicted: IntCounter::new(
                "idempotency_memory_evicted_total",
                "Stored answers evicted by max_entries or max_bytes before their TTL",
            )?,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for MemoryStoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.records.desc();
        d.extend(self.bytes.desc());
        d.extend(self.evicted.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.store.stats();
        self.records
            .set(i64::try_from(s.records).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        self.evicted
            .inc_by(s.evicted.saturating_sub(self.evicted.get()));
        let mut v = self.records.collect();
        v.extend(self.bytes.collect());
        v.extend(self.evicted.collect());
        v
    }
}
