//! Rust client SDK for an application behind tether.
//!
//! tether locks each client to one server (a proxy in front of one
//! regional deployment) through a signed token, and re-places it only at
//! token refresh (docs/design.md §1–§5). This crate is the client's half of that
//! protocol: a [`Client`] logs in through the global URL, sends every
//! request with its access token to the server it is locked to, refreshes
//! before expiry (asking `/closestToMe` first and telling the proxy about
//! critical tasks), follows `421` relock hints, and fails over fast when
//! its server dies.
//!
//! Start with [`Client::builder`], then [`Client::login`] and
//! [`Client::request`]; watch [`Client::events`] for
//! [`Event::ServerChanged`] and show [`SERVER_CHANGED_MESSAGE`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tether_client::Error> {
//! use serde_json::json;
//! let client = tether_client::Client::builder()
//!     .global_url("http://127.0.0.1:8080")
//!     .build()?;
//! client.login(&json!({"username": "alice", "password": "demo"})).await?;
//! let _task = client.critical_task(); // keep the server during the workflow
//! let order = client.post("/orders", &json!({"userId": "alice"})).await?;
//! println!("{} from {:?}", order.status, client.server());
//! # Ok(()) }
//! ```
//!
//! # Retry rules
//!
//! A request is resent only when the answer proves it did not reach the
//! app, at most once per kind within one call:
//! - `421` → resend to the `Tether-Relock` URL (the locked server is also
//!   updated from the body's `lockedServer`);
//! - `503` with `Tether-Relock: refresh` → refresh now (naming the locked
//!   server as unreachable), resend;
//! - `401` `invalid_token` → refresh once, resend;
//! - connection failure (nothing was sent) → refresh now through the
//!   global URL with `unreachableServerId`, resend; if that refresh cannot
//!   get through, or the new server fails to connect too, wait
//!   [`ClientBuilder::reconnect_wait`] ([`Event::Reconnecting`]) and
//!   refresh again, up to [`ClientBuilder::max_reconnect_attempts`] waits,
//!   then [`Error::NoServerAvailable`].
//!
//! With a key ([`ClientBuilder::idempotency_keys`], on by default: every
//! POST and PATCH carries a fresh `Idempotency-Key`, the same one on every
//! resend of that call), two more cases are resent, because the proxy
//! answers a resend of a request the app already handled with the first
//! answer instead of forwarding it again:
//! - a failure after the connection was made (timeout, reset, cut-off
//!   answer) → handled like a connection failure (refresh with
//!   `unreachableServerId`, resend; then reconnect waits);
//! - `409` problem `idempotency-key-in-flight` (the first attempt is still
//!   at the app) → wait its `Retry-After` (at most the reconnect wait),
//!   resend, within the reconnect budget.
//!
//! Never resent: any other answer (returned as a [`Response`], whatever
//! its status) and, without a key (GET and other methods, or keys turned
//! off), any failure after the connection was made ([`Error::Transport`]),
//! since the app may have acted on it. The caller decides, knowing whether
//! its request is idempotent.
#![forbid(unsafe_code)]

mod client;
mod config;
mod critical;
mod error;
mod events;
pub mod idempotency;
mod resolver;
mod retry;
mod session;

pub use client::{Client, Login, Refreshed, Response};
pub use config::{
    default_http_client, ClientBuilder, Config, Routing, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RECONNECT_ATTEMPTS, DEFAULT_RECONNECT_WAIT, DEFAULT_REFRESH_MARGIN,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use critical::CriticalTask;
pub use error::{Error, ResolveError};
pub use events::{Event, RefreshCause, Stats, SERVER_CHANGED_MESSAGE};
pub use reqwest::{Method, StatusCode};
pub use resolver::{FixedUrl, GlobalUrl};
pub use session::{parse_login_headers, LoginHeaders};
pub use tether_protocol::wire::ServerSummary;
