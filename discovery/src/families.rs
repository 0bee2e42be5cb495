//! Refresh-token families: rotation with reuse detection (OAuth 2.0
//! Security BCP, RFC 9700 §4.14.2), kept centrally so every proxy agrees.
//!
//! Each family remembers the hash of its current refresh token's `jti`, the
//! previous one and when it was rotated, and the successor's public
//! particulars (`iat`, `srv`, `rgn`) so a retry within the grace window can
//! be answered with the very same successor. Nothing secret is stored: a
//! hash of a token id cannot be turned back into a token.
//!
//! A rotation is one compare-and-set under a mutex:
//! - presented == current → rotate to the proposed successor (`rotated`);
//! - presented == previous, within the grace window → the successor
//!   already issued (`grace`): concurrent tabs and lost answers;
//! - anything else (an older token, or the previous one after the window)
//!   → reuse: the family is revoked (`revoked`), and stays revoked until
//!   its tokens have expired.
//!
//! A family discovery has never seen (the first refresh after a login, or
//! after a discovery restart: the store is in memory) is adopted on first
//! use, trusting the proxy's signature check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tether_protocol::wire::{RotateOutcome, RotateRequest, RotateResponse};
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Family {
    current: String,
    previous: Option<String>,
    rotated_at: Instant,
    iat: u64,
    srv: String,
    rgn: String,
    /// Unix seconds after which the family can be forgotten.
    expires_at: u64,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Family>,
    /// Revoked family id → Unix seconds until which it must be remembered.
    revoked: HashMap<String, u64>,
}

pub struct Families {
    inner: Mutex<Inner>,
    grace: Duration,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Families this many are kept at most; beyond it the oldest-expiring are
/// dropped first (a bound on memory, far above any test or demo).
pub const MAX_FAMILIES: usize = 1_000_000;

impl Families {
    pub fn new(grace: Duration) -> Families {
        Families {
            inner: Mutex::new(Inner::default()),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain maps: a panic elsewhere cannot leave them half-updated in a
        // way that matters more than losing the entry.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The compare-and-set. Returns the outcome and whether the revoked
    /// set changed (the registry version must then move, so proxies learn
    /// of it on their next poll).
    pub fn rotate(&self, req: &RotateRequest, now: Instant) -> (RotateResponse, bool) {
        let mut g = self.lock();
        if g.revoked.contains_key(&req.family) {
            return (revoked(), false);
        }
        let grace = self.grace;
        let outcome = match g.live.get_mut(&req.family) {
            None => None,
            Some(f) if f.current == req.presented => {
                f.previous = Some(std::mem::replace(&mut f.current, req.successor.clone()));
                f.rotated_at = now;
                f.iat = req.iat;
                f.srv = req.srv.clone();
                f.rgn = req.rgn.clone();
                f.expires_at = f.expires_at.max(req.expires_at);
                Some(RotateResponse {
                    outcome: RotateOutcome::Rotated,
                    iat: Some(req.iat),
                    srv: Some(req.srv.clone()),
                    rgn: Some(req.rgn.clone()),
                })
            }
            Some(f)
                if f.previous.as_deref() == Some(req.presented.as_str())
                    && now.duration_since(f.rotated_at) <= grace =>
            {
                Some(RotateResponse {
                    outcome: RotateOutcome::Grace,
                    iat: Some(f.iat),
                    srv: Some(f.srv.clone()),
                    rgn: Some(f.rgn.clone()),
                })
            }
            Some(_) => {
                // Reuse: revoke the whole family.
                let until = g
                    .live
                    .remove(&req.family)
                    .map_or(req.expires_at, |f| f.expires_at.max(req.expires_at));
                g.revoked.insert(req.family.clone(), until);
                return (revoked(), true);
            }
        };
        if let Some(r) = outcome {
            return (r, false);
        }
        // Unknown family: adopt it.
        if g.live.len() >= MAX_FAMILIES {
            let unix = unix_now();
            g.live.retain(|_, f| f.expires_at > unix);
        }
        g.live.insert(
            req.family.clone(),
            Family {
                current: req.successor.clone(),
                previous: Some(req.presented.clone()),
                rotated_at: now,
                iat: req.iat,
                srv: req.srv.clone(),
                rgn: req.rgn.clone(),
                expires_at: req.expires_at,
            },
        );
        (
            RotateResponse {
                outcome: RotateOutcome::Rotated,
                iat: Some(req.iat),
                srv: Some(req.srv.clone()),
                rgn: Some(req.rgn.clone()),
            },
            false,
        )
    }

    /// Revokes a family (logout). Returns whether it was not revoked yet.
    pub fn revoke(&self, family: &str, expires_at: u64) -> bool {
        let mut g = self.lock();
        let until = g
            .live
            .remove(family)
            .map_or(expires_at, |f| f.expires_at.max(expires_at));
        g.revoked.insert(family.to_owned(), until).is_none()
    }

    /// Revoked families whose tokens may still be live, sorted.
    pub fn revoked(&self) -> Vec<String> {
        let unix = unix_now();
        let mut g = self.lock();
        g.revoked.retain(|_, until| *until > unix);
        let mut v: Vec<String> = g.revoked.keys().cloned().collect();
        v.sort();
        v
    }

    /// (live families, revoked families), for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.live.len(), g.revoked.len())
    }
}

fn revoked() -> RotateResponse {
    RotateResponse {
        outcome: RotateOutcome::Revoked,
        iat: None,
        srv: None,
        rgn: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn req(presented: char, successor: char, iat: u64) -> RotateRequest {
        RotateRequest {
            family: "fam1".into(),
            presented: h(presented),
            successor: h(successor),
            iat,
            srv: "eu-1".into(),
            rgn: "eu".into(),
            expires_at: unix_now() + 3600,
        }
    }

    #[test]
    fn rotation_grace_and_reuse() {
        let f = Families::new(Duration::from_secs(10));
        let t0 = Instant::now();
        // Adopted on first use.
        assert_eq!(
            f.rotate(&req('a', 'b', 1), t0).0.outcome,
            RotateOutcome::Rotated
        );
        // Retry of the same token within the window: the same successor,
        // even if the retry proposes another one.
        let (r, changed) = f.rotate(&req('a', 'c', 2), t0 + Duration::from_secs(3));
        assert_eq!(
            (r.outcome, r.iat, changed),
            (RotateOutcome::Grace, Some(1), false)
        );
        // The successor rotates normally.
        assert_eq!(
            f.rotate(&req('b', 'd', 5), t0 + Duration::from_secs(4))
                .0
                .outcome,
            RotateOutcome::Rotated
        );
        // 'a' is now two generations old: reuse, revoke.
        let (r, changed) = f.rotate(&req('a', 'e', 6), t0 + Duration::from_secs(5));
        assert_eq!((r.outcome, changed), (RotateOutcome::Revoked, true));
        // Everything of that family is refused from now on, even 'd'.
        assert_eq!(
            f.rotate(&req('d', 'f', 7), t0 + Duration::from_secs(6))
                .0
                .outcome,
            RotateOutcome::Revoked
        );
        assert_eq!(f.revoked(), vec!["fam1".to_owned()]);
    }

    #[test]
    fn previous_token_after_the_window_is_reuse() {
        let f = Families::new(Duration::from_secs(10));
        let t0 = Instant::now();
        f.rotate(&req('a', 'b', 1), t0);
        f.rotate(&req('b', 'c', 2), t0);
        let (r, _) = f.rotate(&req('b', 'x', 3), t0 + Duration::from_secs(11));
        assert_eq!(r.outcome, RotateOutcome::Revoked);
    }

    #[test]
    fn logout_revokes() {
        let f = Families::new(Duration::from_secs(10));
        let t0 = Instant::now();
        f.rotate(&req('a', 'b', 1), t0);
        assert!(f.revoke("fam1", unix_now() + 60));
        assert!(!f.revoke("fam1", unix_now() + 60));
        assert_eq!(
            f.rotate(&req('b', 'c', 2), t0).0.outcome,
            RotateOutcome::Revoked
        );
        assert_eq!(f.counts(), (0, 1));
        // Expired revocations are forgotten.
        assert!(f.revoke("old", unix_now() - 1));
        assert_eq!(f.revoked(), vec!["fam1".to_owned()]);
    }

    #[test]
    fn concurrent_rotations_issue_one_successor() {
        let f = std::sync::Arc::new(Families::new(Duration::from_secs(10)));
        let t0 = Instant::now();
        f.rotate(&req('a', 'b', 1), t0);
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let f = f.clone();
                std::thread::spawn(move || {
                    f.rotate(&req('b', if i % 2 == 0 { 'c' } else { 'd' }, 100 + i), t0)
                        .0
                })
            })
            .collect();
        let results: Vec<RotateResponse> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let rotated: Vec<_> = results
            .iter()
            .filter(|r| r.outcome == RotateOutcome::Rotated)
            .collect();
        assert_eq!(rotated.len(), 1);
        let iat = rotated[0].iat;
        assert!(
            results.iter().all(|r| r.iat == iat),
            "every caller gets the one successor"
        );
    }
}
