//! The proxy's background work, each part its own Pingora background
//! service (with its own runtime thread), so one that stalls never holds
//! up another:
//!
//! - `heartbeat`: tells discovery this server is alive, with its load;
//! - `poll`: long-polls discovery for the registry and swaps a snapshot
//!   in once the [`crate::registry::Gate`] lets it pass;
//! - `reload`: reloads the key ring when its file changes or on SIGHUP;
//! - `sampler`: samples the load figure and the staleness gauge.
//!
//! None of them blocks its thread: peer addresses are resolved with
//! `tokio::net::lookup_host`, which runs the system resolver off the
//! async threads.

mod heartbeat;
mod poll;
mod reload;
mod sampler;

use std::future::Future;
use std::time::Duration;

use pingora_core::server::ShutdownWatch;

pub use heartbeat::Heartbeats;
pub use poll::Poller;
pub use reload::KeyRingReloader;
pub use sampler::LoadSampler;

/// Runs `work` until the server shuts down.
async fn until_shutdown(work: impl Future<Output = ()>, mut shutdown: ShutdownWatch) {
    tokio::select! {
        _ = work => {}
        _ = shutdown.changed() => {}
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // Full jitter in [d/2, d]: spreads proxies that failed together.
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}
