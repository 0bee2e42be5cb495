//! What the client tells the app about its lock, and its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tether_protocol::wire::ServerSummary;

/// What an app shows its user on [`Event::ServerChanged`] (docs/design.md §5).
pub const SERVER_CHANGED_MESSAGE: &str =
    "Your primary server has changed. Any missing data will be synced within 5 minutes.";

/// Why a refresh happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCause {
    /// The access token was close to expiry.
    Expiry,
    /// [`crate::Client::refresh`] was called.
    Manual,
    /// A `503` with `Tether-Relock: refresh`: the locked server is gone.
    ServerUnavailable,
    /// A `401 invalid_token` from the proxy.
    InvalidToken,
    /// The locked server could not be reached (sent `unreachableServerId`).
    Unreachable,
}

/// Lock events, from [`crate::Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A login succeeded and locked the client to `server`.
    LoggedIn { server: ServerSummary },
    /// A refresh succeeded. `reason` is the proxy's wire spelling
    /// (`kept`, `critical_task`, `server_down`, …).
    Refreshed {
        server: ServerSummary,
        server_changed: bool,
        reason: String,
        cause: RefreshCause,
    },
    /// A refresh moved the client to another server: show
    /// [`SERVER_CHANGED_MESSAGE`].
    ServerChanged {
        from: ServerSummary,
        to: ServerSummary,
        reason: String,
    },
    /// A `421` was followed to the server the token is locked to.
    Relocked { from_url: String, to: ServerSummary },
    /// Nothing could be reached; the client waits `wait` before refreshing
    /// again ("Reconnecting…"). `attempt` counts from 1.
    Reconnecting { wait: Duration, attempt: u32 },
    /// The session ended ([`crate::Client::logout`], or the refresh token
    /// was refused).
    LoggedOut,
}

/// Counters since the client was built. All are totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub logins: u64,
    /// Calls of [`crate::Client::request`].
    pub requests: u64,
    /// Resends after a proxy signal or a connection failure.
    pub retries: u64,
    /// Successful refreshes, whatever the cause.
    pub refreshes: u64,
    /// Refreshes that moved the client to another server.
    pub server_changes: u64,
    /// `421`s followed.
    pub relocks: u64,
    /// Refreshes sent with `unreachableServerId` that succeeded.
    pub failovers: u64,
    /// "Reconnecting…" waits.
    pub reconnect_waits: u64,
    /// Answers the proxy replayed from its `Idempotency-Key` store
    /// (`Idempotent-Replayed: true`): a resent request the app had
    /// already answered.
    pub replayed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub logins: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub refreshes: AtomicU64,
    pub server_changes: AtomicU64,
    pub relocks: AtomicU64,
    pub failovers: AtomicU64,
    pub reconnect_waits: AtomicU64,
    pub replayed: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            logins: get(&self.logins),
            requests: get(&self.requests),
            retries: get(&self.retries),
            refreshes: get(&self.refreshes),
            server_changes: get(&self.server_changes),
            relocks: get(&self.relocks),
            failovers: get(&self.failovers),
            reconnect_waits: get(&self.reconnect_waits),
            replayed: get(&self.replayed),
        }
    }
}
