//! The lock decision (DESIGN.md §4, items 3–5): given a verified `srv`
//! claim and the registry, where does the request go?
//!
//! Pure and allocation-free: one hash lookup in the current view.

use std::net::SocketAddr;

use tether_protocol::wire::ServerEntry;

use crate::sync::RegistryView;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route<'v> {
    /// `srv` is this server: forward to the local upstream pool. A proxy
    /// always serves its own locked clients, whatever the registry says.
    Local,
    /// `srv` is another live server (draining servers still serve the
    /// clients locked to them). `addr` is its proxy's address from the
    /// registry, if resolved (forward mode only).
    Foreign(&'v ServerEntry, Option<SocketAddr>),
    /// `srv` is unknown or not healthy: the client must refresh.
    Unavailable,
}

/// `known_dead` reports servers a fast-failover probe found dead that the
/// registry still lists; their clients are told to refresh rather than
/// sent to a corpse.
pub fn decide<'v>(
    view: &'v RegistryView,
    self_id: &str,
    srv: &str,
    known_dead: impl Fn(&str) -> bool,
) -> Route<'v> {
    if srv == self_id {
        return Route::Local;
    }
    match view.registry.get(srv) {
        Some(entry) if entry.is_live() && !known_dead(srv) => {
            Route::Foreign(entry, view.peers.get(srv).copied())
        }
        _ => Route::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protocol::registry::Registry;
    use tether_protocol::wire::Snapshot;

    fn entry(id: &str, healthy: bool, draining: bool) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            region: "eu".into(),
            url: format!("http://127.0.0.1:1/{id}"),
            load: 0.0,
            healthy,
            draining,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn routes() {
        let view = RegistryView {
            registry: Registry::new(Snapshot {
                version: 1,
                servers: vec![
                    entry("b", true, false),
                    entry("c", false, false),
                    entry("d", true, true),
                    entry("dead", true, false),
                ],
                revoked_families: vec![],
            }),
            peers: [("b".to_owned(), "127.0.0.1:9".parse().unwrap())].into(),
        };
        let decide = |v, me, srv| decide(v, me, srv, |id| id == "dead");
        assert_eq!(decide(&view, "a", "a"), Route::Local);
        // Itself even when absent from the registry.
        assert!(view.registry.get("a").is_none());
        assert!(matches!(decide(&view, "a", "b"), Route::Foreign(e, Some(_)) if e.id == "b"));
        assert!(matches!(decide(&view, "a", "d"), Route::Foreign(e, None) if e.id == "d"));
        assert_eq!(decide(&view, "a", "c"), Route::Unavailable);
        assert_eq!(decide(&view, "a", "zz"), Route::Unavailable);
        assert_eq!(
            decide(&view, "a", "dead"),
            Route::Unavailable,
            "probe-dead beats the registry"
        );
        assert_eq!(
            decide(&view, "a", "http://127.0.0.1:9/"),
            Route::Unavailable
        );
    }
}
