//! The tether contract: what travels on the wire and how a client is placed.
//!
//! This crate has no I/O, no tokio and no Pingora, so everything in it can be
//! unit-tested in microseconds and shared by the proxy, the discovery
//! service and the client SDK.
//!
//! Start reading at:
//! - [`wire`]: the JSON bodies of docs/design.md §4 and §6, camelCase on the wire;
//! - [`claims`]: the access- and refresh-token claims of docs/design.md §3;
//! - [`registry`]: an indexed, read-only view of a registry snapshot;
//! - [`placement`]: the re-placement policy of docs/design.md §5 as a pure
//!   function over a [`registry::Registry`].
#![forbid(unsafe_code)]

pub mod claims;
pub mod delta;
pub mod placement;
pub mod registry;
pub mod validate;
pub mod wire;

/// Header names of the public contract, lower-case as HTTP/2 and Pingora
/// want them.
pub mod headers {
    pub const ACCESS_TOKEN: &str = "tether-access-token";
    pub const REFRESH_TOKEN: &str = "tether-refresh-token";
    pub const EXPIRES_IN: &str = "tether-expires-in";
    pub const SERVER_ID: &str = "tether-server-id";
    pub const SERVER_URL: &str = "tether-server-url";
    pub const SERVER_REGION: &str = "tether-server-region";
    pub const RELOCK: &str = "tether-relock";
    pub const SUBJECT: &str = "x-tether-subject";
    pub const SERVER: &str = "x-tether-server";
    /// Marker on a proxy-to-proxy forwarded request (forward mode).
    pub const HOP: &str = "x-tether-hop";
    /// The value of `Tether-Relock` that tells a client to refresh.
    pub const RELOCK_REFRESH: &str = "refresh";
}

/// Token `typ` header values (docs/design.md §3).
pub mod typ {
    pub const ACCESS: &str = "at+jwt";
    pub const REFRESH: &str = "rt+jwt";
}
