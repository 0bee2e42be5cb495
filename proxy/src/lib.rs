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
//!   between discovery nodes in [`discovery_nodes::DiscoveryNodes`]), which also runs
//!   the heartbeats, key-ring reloads and load sampling;
//! - the one path and unambiguous framing, settled before anything reads
//!   a request: [`path`] (the canonical path), [`framing`];
//! - headers read, added and stripped: [`headers`]; the hop marker between
//!   proxies: [`hop`];
//! - `Idempotency-Key` at the edge: [`idempotency`] (claims, stored
//!   answers, replays), called from the service's phases for requests
//!   forwarded to this server's app;
//! - CORS for web apps (preflights, `Access-Control-*` on every answer):
//!   [`cors`];
//! - TLS and HTTP/2 (ALPN `h2`) on the client listener: [`tls`],
//!   [`http2`] (the codec's limits; the request path is the same code);
//! - the configuration: [`config`] (file layer, validation, typed layer);
//! - shutdown grace, upgrade handover, the clients still locked here
//!   (for drains): [`lifecycle`];
//! - the wiring of it all: [`server`], over the shared [`State`].
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod config;
pub mod cors;
pub mod discovery_nodes;
pub mod endpoints;
pub mod framing;
pub mod guard;
pub mod headers;
pub mod hop;
pub mod http2;
pub mod idempotency;
pub mod lifecycle;
pub mod load;
pub mod lock;
pub mod metrics;
pub mod path;
pub mod probe;
pub mod registry;
pub mod reports;
pub mod resolve;
pub mod respond;
pub mod retry;
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
