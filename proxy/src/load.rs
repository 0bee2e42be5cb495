//! The load figure this server reports in heartbeats.
//!
//! Load = requests in flight through this proxy (forwarded to its
//! upstream), sampled every 100 ms and smoothed with an exponentially
//! weighted moving average whose time constant is one heartbeat interval.
//! It is a figure of current concurrency, comparable between servers of
//! similar capacity, and cheap: one atomic add per request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Load {
    in_flight: AtomicI64,
    /// f64 bits of the smoothed value.
    smoothed: AtomicU64,
}

pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Load {
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// One sampling step; `alpha` = SAMPLE_EVERY / time constant.
    pub fn sample(&self, alpha: f64) {
        let now = self.in_flight().max(0) as f64;
        let prev = f64::from_bits(self.smoothed.load(Ordering::Relaxed));
        let next = prev + alpha.clamp(0.0, 1.0) * (now - prev);
        self.smoothed.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The smoothed load, rounded to 0.01.
    pub fn value(&self) -> f64 {
        let v = f64::from_bits(self.smoothed.load(Ordering::Relaxed));
        (v * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooths_towards_in_flight() {
        let l = Load::default();
        for _ in 0..4 {
            l.enter();
        }
        l.sample(0.5);
        assert_eq!(l.value(), 2.0);
        l.sample(0.5);
        assert_eq!(l.value(), 3.0);
        for _ in 0..4 {
            l.leave();
        }
        for _ in 0..50 {
            l.sample(0.5);
        }
        assert_eq!(l.value(), 0.0);
    }
}
