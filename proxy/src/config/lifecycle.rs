//! The `[server]` keys of the process's life (shutdown grace and timeout,
//! the upgrade socket), validated. The behaviour that reads them is in
//! `crate::lifecycle` (docs/design.md §11); the values live here so that
//! the configuration layer imports nothing from the layers that use it.

use std::path::PathBuf;
use std::time::Duration;

/// Route 53's health check every 10 s with a failure threshold of 3 takes
/// a failing server out after about 30 s; 10 s more for the check in
/// progress and the resolvers' first retries.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 40;
/// Requests in flight when the listeners close get this long.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 20;
/// Under the shipped systemd unit's `RuntimeDirectory=tether-proxy`.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/run/tether-proxy/upgrade.sock";

/// The `[server]` shutdown and upgrade keys, validated.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// `shutdown_grace_seconds`: failing health, still serving.
    pub shutdown_grace: Duration,
    /// `shutdown_timeout_seconds`: for requests in flight once the
    /// listeners closed.
    pub shutdown_timeout: Duration,
    /// `upgrade_socket`: where a process started with `--upgrade` waits
    /// for the listening sockets of the running one.
    pub upgrade_socket: PathBuf,
}
