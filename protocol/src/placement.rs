//! The re-placement policy (docs/design.md §5): where a client is locked after a
//! refresh. A pure function over a [`Registry`]; the proxy supplies the
//! inputs and turns the [`Decision`] into tokens.
//!
//! Rules, first match wins:
//! 1. The current server is gone, unhealthy or confirmed dead by a probe →
//!    the user's home region if it has an eligible server, else the closest
//!    server if eligible, else the least-loaded eligible server of the
//!    closest's region, of the answering proxy's region, or anywhere
//!    (`server_down`, even with a critical task: the server is gone).
//! 2. A critical task is in progress → keep (`critical_task`), even on a
//!    draining server.
//! 3. A home region is set and has an eligible server → keep the current
//!    server if it is in the home region, eligible and not markedly busier
//!    than the least-loaded one (`kept`), else move to that one
//!    (`home_region`).
//! 4. The closest server is in the current server's region → keep unless
//!    the current server is draining or markedly busier than the region's
//!    least-loaded one (`kept` / `same_region_least_load`).
//! 5. The closest server is in another region → move to it, or to the
//!    least-loaded server of its region when the closest is markedly
//!    busier or draining (`moved_region`).
//!
//! "Markedly busier" is the hysteresis: `load > best * (1 + ratio) +
//! absolute`, so equal or near-equal loads never move anybody.

use crate::registry::Registry;
use crate::wire::ServerEntry;

/// Why a client was placed where it was; the wire spelling is
/// [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ServerDown,
    CriticalTask,
    HomeRegion,
    Kept,
    SameRegionLeastLoad,
    MovedRegion,
    /// Not a placement by these rules: no discovery node answered, so the
    /// proxy kept the current lock (or re-placed only from a dead server)
    /// and handed the refresh token back unrotated (docs/design.md §6b).
    DiscoveryUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::ServerDown,
        Reason::CriticalTask,
        Reason::HomeRegion,
        Reason::Kept,
        Reason::SameRegionLeastLoad,
        Reason::MovedRegion,
        Reason::DiscoveryUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ServerDown => "server_down",
            Reason::CriticalTask => "critical_task",
            Reason::HomeRegion => "home_region",
            Reason::Kept => "kept",
            Reason::SameRegionLeastLoad => "same_region_least_load",
            Reason::MovedRegion => "moved_region",
            Reason::DiscoveryUnavailable => "discovery_unavailable",
        }
    }
}

/// How much busier a server must be before a client is moved off it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// Relative margin over the least-loaded server's load (default 0.25).
    pub ratio: f64,
    /// Absolute margin, in load units (default 2.0), so idle servers with
    /// loads of 0 and 1 do not trade clients.
    pub absolute: f64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            ratio: 0.25,
            absolute: 2.0,
        }
    }
}

impl Hysteresis {
    fn markedly_busier(&self, load: f64, best: f64) -> bool {
        load > best * (1.0 + self.ratio) + self.absolute
    }
}

/// The inputs of one placement.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The locked server id from the refresh token.
    pub current: &'a str,
    /// `closestServerId` from the client; `None` (or an id not in the
    /// registry) means the answering server.
    pub closest: Option<&'a str>,
    pub critical_task: bool,
    /// The user's home region, from the token.
    pub home_region: Option<&'a str>,
    /// The proxy answering the refresh.
    pub answering: &'a str,
    pub answering_region: &'a str,
    /// Servers a fast-failover probe confirmed dead: treated as gone for
    /// this placement whatever the registry says.
    pub confirmed_dead: &'a [&'a str],
}

/// Where the client goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision<'r> {
    pub server: &'r ServerEntry,
    pub reason: Reason,
    /// `server.id != request.current`.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no live server is available for placement")]
    NoServerAvailable,
}

/// Applies the rules in the module docs.
pub fn place<'r>(
    reg: &'r Registry,
    req: &Request<'_>,
    h: &Hysteresis,
) -> Result<Decision<'r>, PlacementError> {
    let dead = |s: &ServerEntry| req.confirmed_dead.contains(&s.id.as_str());
    let decide = |server: &'r ServerEntry, reason: Reason| Decision {
        server,
        reason,
        changed: server.id != req.current,
    };
    let closest = req
        .closest
        .and_then(|id| reg.get(id))
        .or_else(|| reg.get(req.answering));
    let closest_region = closest.map_or(req.answering_region, |s| s.region.as_str());
    let home = req
        .home_region
        .and_then(|region| reg.least_loaded_in(region, dead));

    let current = match reg.get(req.current) {
        Some(s) if s.is_live() && !dead(s) => s,
        // Rule 1: the current server is gone.
        _ => {
            let pick = home
                .or_else(|| closest.filter(|s| s.is_eligible() && !dead(s)))
                .or_else(|| reg.least_loaded_in(closest_region, dead))
                .or_else(|| reg.least_loaded_in(req.answering_region, dead))
                .or_else(|| reg.least_loaded_anywhere(dead))
                .ok_or(PlacementError::NoServerAvailable)?;
            return Ok(decide(pick, Reason::ServerDown));
        }
    };

    // Rule 2.
    if req.critical_task {
        return Ok(decide(current, Reason::CriticalTask));
    }

    // Rule 3. A home region with no eligible server is ignored: the user
    // is better served anywhere than nowhere.
    if let (Some(home_region), Some(best)) = (req.home_region, home) {
        let stays = current.region == home_region
            && current.is_eligible()
            && !h.markedly_busier(current.load, best.load);
        return Ok(if stays {
            decide(current, Reason::Kept)
        } else {
            decide(best, Reason::HomeRegion)
        });
    }

    // Rule 5: another region is closer.
    if closest_region != current.region {
        let target = match closest {
            Some(c) if c.is_eligible() && !dead(c) => {
                let best = reg.least_loaded_in(&c.region, dead);
                match best {
                    Some(b) if h.markedly_busier(c.load, b.load) => Some(b),
                    _ => Some(c),
                }
            }
            _ => reg.least_loaded_in(closest_region, dead),
        };
        if let Some(t) = target {
            return Ok(decide(t, Reason::MovedRegion));
        }
        // Nothing eligible in the closest region: stay in the current one.
    }

    // Rule 4: same region, least load with hysteresis.
    match reg.least_loaded_in(&current.region, dead) {
        Some(best) if current.is_eligible() && !h.markedly_busier(current.load, best.load) => {
            Ok(decide(current, Reason::Kept))
        }
        None if current.is_eligible() => Ok(decide(current, Reason::Kept)),
        Some(best) => Ok(decide(best, Reason::SameRegionLeastLoad)),
        // The current server is draining and its region has nobody else.
        None => match reg.least_loaded_anywhere(dead) {
            Some(other) => Ok(decide(other, Reason::MovedRegion)),
            // A draining server is better than no server at all.
            None => Ok(decide(current, Reason::Kept)),
        },
    }
}

#[cfg(test)]
mod tests;
