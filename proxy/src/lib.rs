//! tether's lock-enforcing edge proxy, built on Pingora.
//!
//! One process = one *server*: a Pingora proxy in front of one upstream
//! pool (the unmodified app), with a stable id, a region and a public URL.
//! Every client request carries an access token whose `srv` claim names
//! the server the client is locked to; this crate decides, per request,
//! whether to forward it locally, hint a relock (421), forward it one hop
//! to the locked server, or ask the client to refresh (503).
//!
//! Where things are decided:
//! - the lock, per request: [`lock`] (the [`lock::Verdict`]); the
//!   [`service`] only acts on it, one phase of Pingora's `ProxyHttp` at a
//!   time;
//! - tokens minted and verified: [`tokens`] (the key-ring file in
//!   [`tokens::KeyRing`], the live ring in [`tokens::TokenStore`]);
//! - a client placed again at refresh: [`endpoints`] (`refresh`), over
//!   the policy in `tether_protocol::placement`; login, logout,
//!   `/closestToMe`, `/healthz` beside it;
//! - the registry snapshot checked and swapped: [`registry`] (the gate and
//!   the `ArcSwap`ed view), fed by the poller in [`sync`] (deltas, failover
//!   between discovery nodes in [`sync::DiscoveryNodes`]), which also runs
//!   the heartbeats, key-ring reloads and load sampling;
//! - headers read, added and stripped: [`headers`]; the hop marker between
//!   proxies: [`hop`];
//! - the configuration: [`config`] (file layer, validation, typed layer);
//! - the wiring of it all: [`server`], over the shared [`State`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod endpoints;
pub mod framing;
pub mod guard;
pub mod headers;
pub mod hop;
pub mod load;
pub mod lock;
pub mod metrics;
pub mod path;
pub mod probe;
pub mod registry;
pub mod respond;
pub mod secrets;
pub mod server;
pub mod service;
pub mod state;
pub mod sync;
pub mod tls;
pub mod tokens;
pub mod upstream;

pub use server::run;
pub use state::{Error, State};
