//! The sample backend of tether's demo and tests: an ordinary,
//! **unmodified** geo-distributed app with no tether code in it.
//!
//! One process runs several regions. Each region is its own HTTP listener
//! with its own region-local order store; every write replicates to the
//! other regions' stores asynchronously, after a configurable lag plus
//! jitter, as versioned events (stale ones are ignored and counted). A
//! client that hops between regions in the middle of the
//! create → add item → check out workflow hits a replica that has not seen
//! its previous step yet and fails with 404/409: exactly the failure that
//! geo routing alone causes and tether prevents.
//!
//! Where to start:
//! - [`SampleCluster::start`] with a [`ClusterConfig`]: run it in-process
//!   (the demo and tests do);
//! - [`cli`]: `tether sample-app`, the same as a process;
//! - [`api`]: the endpoints (also in `docs/sampleapp.md`);
//! - [`store`]: the replica and its versioned events;
//! - [`users`]: the seeded user table.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
mod cluster;
mod replication;
pub mod store;
pub mod users;

pub use api::RegionStats;
pub use cluster::{ClusterConfig, SampleCluster, DEFAULT_JITTER, DEFAULT_LAG, MAX_USERS};

/// Why the sample app could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad setting; names the flag, the value and what is allowed.
    #[error("{key}: {value:?} is not allowed: expected {allowed}")]
    Config {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("region {region}: cannot listen on {addr}: {source}")]
    Bind {
        region: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot write the ready lines to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

impl Error {
    fn config(key: &'static str, value: &str, allowed: &'static str) -> Self {
        Error::Config {
            key,
            value: value.to_owned(),
            allowed,
        }
    }
}

#[cfg(test)]
mod tests;
