//! The key-ring reloader: every second, and on SIGHUP, the key-ring file
//! is re-read and, when it changed and parses, swapped in
//! ([`crate::tokens::TokenStore::reload`]). The same tick forgets
//! hop-marker nonces too old to matter ([`crate::hop::HopKey::prune`]).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::metrics::KeyRingReload;
use crate::state::State;
use crate::tokens::{unix_now, Reload};

/// The key-ring reloader, as a background service.
pub struct KeyRingReloader {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for KeyRingReloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::until_shutdown(run(&self.state), shutdown).await;
    }
}

/// Reloads the key ring when its file changes (checked every second) or
/// on SIGHUP. Installing the SIGHUP handler also keeps a stray SIGHUP from
/// killing the proxy.
async fn run(state: &State) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); the key ring is still reloaded when its file changes");
            None
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let trigger = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = tick.tick() => "file check",
                _ = h.recv() => "SIGHUP",
            },
            None => {
                tick.tick().await;
                "file check"
            }
        };
        state.hop_key.prune(unix_now());
        match state.tokens.reload() {
            Ok(Reload::Reloaded) => {
                tracing::info!(trigger, "key ring reloaded");
                state.metrics.keyring_reload(KeyRingReload::Reloaded);
            }
            Ok(Reload::Unchanged) => {}
            Err(e) => {
                tracing::error!(
                    trigger,
                    "key ring not reloaded, keeping the current keys: {e}"
                );
                state.metrics.keyring_reload(KeyRingReload::Failed);
            }
        }
    }
}
