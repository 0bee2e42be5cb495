//! The lock decision (docs/design.md §4, items 3–5): where a request with a
//! verified access token goes. Pure: no I/O, no clock.
//!
//! In two steps, because the hop marker is checked between them (only a
//! request with a valid token may spend a marker):
//!
//! 1. [`locate`], inside the token check while the claims are borrowed:
//!    is the family revoked, where does the `srv` claim point ([`decide`]:
//!    one hash lookup in the current view, allocation-free), and is the
//!    subject a header value;
//! 2. [`verdict`], given whether the request already made its one hop and
//!    the foreign-lock mode: [`Verdict`], which the service answers or
//!    forwards as it says.

use std::net::SocketAddr;

use http::HeaderValue;
use tether_protocol::wire::{ServerEntry, ServerSummary};

use crate::config::ForeignLock;
use crate::registry::RegistryView;
use crate::tokens::{AccessView, TokenError};

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

/// Where a verified token's lock points: step 1.
#[derive(Debug, Clone, PartialEq)]
pub enum Locked {
    /// This server; the subject, ready to be the `X-Tether-Subject` value.
    Here(HeaderValue),
    /// Another live server, with its proxy's address when resolved
    /// (forward mode only).
    There(ServerSummary, Option<SocketAddr>),
    /// Unknown, not healthy, or found dead by a probe.
    Gone,
}

/// Step 1, given the token's claims: a revoked family and a subject that
/// cannot be a header value are token errors (401); otherwise where the
/// lock points. `known_dead` as for [`decide`].
pub fn locate(
    view: &RegistryView,
    self_id: &str,
    claims: AccessView<'_>,
    known_dead: impl Fn(&str) -> bool,
) -> Result<Locked, TokenError> {
    if view.registry.is_revoked(claims.fam) {
        return Err(TokenError::Revoked);
    }
    match decide(view, self_id, claims.srv, known_dead) {
        Route::Local => match claims.subject {
            Some(v) => Ok(Locked::Here(v.clone())),
            None => HeaderValue::from_str(claims.sub)
                .map(Locked::Here)
                .map_err(|_| TokenError::BadClaims),
        },
        Route::Foreign(entry, addr) => Ok(Locked::There(entry.summary(), addr)),
        Route::Unavailable => Ok(Locked::Gone),
    }
}

/// What the proxy does with a request whose token verified.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward to this server's upstream pool, as this subject.
    Local(HeaderValue),
    /// Forward one hop to the locked server's proxy (forward mode).
    Forward(SocketAddr),
    /// `421 wrong_server` + `Tether-Relock: <url>`: the client goes to
    /// its locked server itself.
    Relock(ServerSummary),
    /// `503 server_unavailable` + `Tether-Relock: refresh`: the locked
    /// server is gone; the client refreshes to get a new lock.
    Refresh,
    /// `508 forward_loop`: the request already made its one hop, and the
    /// sender thought this server holds the lock. Never a second hop.
    Loop,
}

/// Step 2: `hopped` = the request carries a valid hop marker.
pub fn verdict(locked: Locked, hopped: bool, mode: ForeignLock) -> Verdict {
    match locked {
        Locked::Here(subject) => Verdict::Local(subject),
        Locked::Gone => Verdict::Refresh,
        Locked::There(..) if hopped => Verdict::Loop,
        Locked::There(_, Some(addr)) if mode == ForeignLock::Forward => Verdict::Forward(addr),
        Locked::There(server, _) => Verdict::Relock(server),
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

    fn claims<'a>(sub: &'a str, srv: &'a str, fam: &'a str) -> AccessView<'a> {
        AccessView {
            sub,
            srv,
            fam,
            subject: None,
        }
    }

    fn view() -> RegistryView {
        RegistryView {
            registry: Registry::new(Snapshot {
                version: 1,
                servers: vec![entry("b", true, false), entry("c", false, false)],
                revoked_families: vec!["gone-family".into()],
            }),
            peers: [("b".to_owned(), "127.0.0.1:9".parse().unwrap())].into(),
        }
    }

    #[test]
    fn locate_reads_revocation_lock_and_subject() {
        let view = view();
        let alive = |_: &str| false;
        assert_eq!(
            locate(&view, "a", claims("alice", "a", "f1"), alive),
            Ok(Locked::Here(HeaderValue::from_static("alice")))
        );
        assert_eq!(
            locate(&view, "a", claims("alice", "a", "gone-family"), alive),
            Err(TokenError::Revoked),
            "a revoked family is refused wherever its lock points"
        );
        assert_eq!(
            locate(&view, "a", claims("bad\nsubject", "a", "f1"), alive),
            Err(TokenError::BadClaims)
        );
        // A value the token cache prepared is handed on as it is.
        let prepared = HeaderValue::from_str("alice").unwrap();
        let with_value = AccessView {
            subject: Some(&prepared),
            ..claims("alice", "a", "f1")
        };
        match locate(&view, "a", with_value, alive) {
            Ok(Locked::Here(v)) => {
                assert_eq!(v.as_bytes().as_ptr(), prepared.as_bytes().as_ptr())
            }
            other => panic!("expected Here, got {other:?}"),
        }
        let b = view.registry.get("b").unwrap().summary();
        assert_eq!(
            locate(&view, "a", claims("bob", "b", "f1"), alive),
            Ok(Locked::There(b, Some("127.0.0.1:9".parse().unwrap())))
        );
        assert_eq!(
            locate(&view, "a", claims("bob", "c", "f1"), alive),
            Ok(Locked::Gone)
        );
        assert_eq!(
            locate(&view, "a", claims("bob", "b", "f1"), |id| id == "b"),
            Ok(Locked::Gone)
        );
    }

    #[test]
    fn verdicts() {
        use ForeignLock::{Forward, Redirect};
        let subject = HeaderValue::from_static("alice");
        let b = view().registry.get("b").unwrap().summary();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let here = || Locked::Here(subject.clone());
        let there = |a| Locked::There(b.clone(), a);
        for mode in [Redirect, Forward] {
            for hopped in [false, true] {
                // The locked server serves its clients, hop or not.
                assert_eq!(
                    verdict(here(), hopped, mode),
                    Verdict::Local(subject.clone())
                );
                assert_eq!(verdict(Locked::Gone, hopped, mode), Verdict::Refresh);
            }
            // Never a second hop.
            assert_eq!(verdict(there(Some(addr)), true, mode), Verdict::Loop);
            assert_eq!(verdict(there(None), true, mode), Verdict::Loop);
            // Without an address (an https:// peer) even forward mode
            // hints a relock.
            assert_eq!(
                verdict(there(None), false, mode),
                Verdict::Relock(b.clone())
            );
        }
        assert_eq!(
            verdict(there(Some(addr)), false, Forward),
            Verdict::Forward(addr)
        );
        assert_eq!(
            verdict(there(Some(addr)), false, Redirect),
            Verdict::Relock(b.clone())
        );
    }
}
