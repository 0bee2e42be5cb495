//! An indexed, read-only view of a registry [`Snapshot`].
//!
//! Built once when a new snapshot arrives (never per request), so the
//! request path and the placement policy look servers up by id in O(1) and
//! find the least-loaded eligible server of a region by walking a list
//! that is already sorted by load.

use std::collections::HashMap;

use crate::wire::{ServerEntry, Snapshot};

#[derive(Debug, Clone, Default)]
pub struct Registry {
    version: u64,
    servers: Vec<ServerEntry>,
    by_id: HashMap<String, usize>,
    /// Eligible (healthy, not draining) servers per region, by ascending
    /// load then id, so ties break the same way on every proxy.
    eligible_by_region: HashMap<String, Vec<usize>>,
    /// Every eligible server, same order.
    eligible: Vec<usize>,
    /// Revoked refresh families (their access tokens are refused too).
    revoked: std::collections::HashSet<String>,
}

impl Registry {
    /// Indexes a snapshot. Duplicate ids keep the first entry (discovery
    /// never sends duplicates; [`crate::registry::check_snapshot`] refuses
    /// them before they get here).
    pub fn new(snapshot: Snapshot) -> Self {
        let Snapshot {
            version,
            servers,
            revoked_families,
        } = snapshot;
        let mut by_id = HashMap::with_capacity(servers.len());
        for (i, s) in servers.iter().enumerate() {
            by_id.entry(s.id.clone()).or_insert(i);
        }
        let mut eligible: Vec<usize> = (0..servers.len())
            .filter(|&i| servers[i].is_eligible() && by_id.get(&servers[i].id) == Some(&i))
            .collect();
        eligible.sort_by(|&a, &b| {
            servers[a]
                .load
                .total_cmp(&servers[b].load)
                .then_with(|| servers[a].id.cmp(&servers[b].id))
        });
        let mut eligible_by_region: HashMap<String, Vec<usize>> = HashMap::new();
        for &i in &eligible {
            eligible_by_region
                .entry(servers[i].region.clone())
                .or_default()
                .push(i);
        }
        Registry {
            version,
            servers,
            by_id,
            eligible_by_region,
            eligible,
            revoked: revoked_families.into_iter().collect(),
        }
    }

    /// Whether a refresh family is revoked. Free when none is.
    pub fn is_revoked(&self, family: &str) -> bool {
        !self.revoked.is_empty() && self.revoked.contains(family)
    }

    pub fn revoked_families(&self) -> &std::collections::HashSet<String> {
        &self.revoked
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn servers(&self) -> &[ServerEntry] {
        &self.servers
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&ServerEntry> {
        self.by_id.get(id).map(|&i| &self.servers[i])
    }

    /// The least-loaded eligible server of `region` that `skip` does not
    /// reject.
    pub fn least_loaded_in(
        &self,
        region: &str,
        skip: impl Fn(&ServerEntry) -> bool,
    ) -> Option<&ServerEntry> {
        self.eligible_by_region
            .get(region)?
            .iter()
            .map(|&i| &self.servers[i])
            .find(|s| !skip(s))
    }

    /// The least-loaded eligible server anywhere that `skip` does not reject.
    pub fn least_loaded_anywhere(
        &self,
        skip: impl Fn(&ServerEntry) -> bool,
    ) -> Option<&ServerEntry> {
        self.eligible
            .iter()
            .map(|&i| &self.servers[i])
            .find(|s| !skip(s))
    }

    /// Live (healthy) servers per region, for metrics.
    pub fn live_by_region(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for s in self.by_id.values().map(|&i| &self.servers[i]) {
            if s.is_live() {
                *m.entry(s.region.as_str()).or_insert(0) += 1;
            }
        }
        m
    }
}

/// Why a snapshot from discovery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("server {index}: {error}")]
    BadEntry {
        index: usize,
        error: crate::validate::FieldError,
    },
    #[error("server id {0:?} is listed twice")]
    DuplicateId(String),
    #[error("version {new} is older than the current version {current}")]
    VersionWentBack { current: u64, new: u64 },
    #[error("the snapshot is empty while {previous} servers were known")]
    Empty { previous: usize },
    #[error("{gone} of {previous} known servers vanished at once (more than half)")]
    MassEviction { gone: usize, previous: usize },
}

/// Checks a snapshot before a proxy swaps it in: every entry valid, no
/// duplicate ids, the version not going backwards, and nothing implausible
/// relative to the current registry (docs/design.md §6: empty, or most servers
/// gone at once). A registry of fewer than 4 servers may shrink freely,
/// since losing one of three is an ordinary failure.
pub fn check_snapshot(current: &Registry, next: &Snapshot) -> Result<(), SnapshotError> {
    let mut seen = std::collections::HashSet::with_capacity(next.servers.len());
    for (index, s) in next.servers.iter().enumerate() {
        let entry_err = |error| SnapshotError::BadEntry { index, error };
        crate::validate::server_id("id", &s.id).map_err(entry_err)?;
        crate::validate::region("region", &s.region).map_err(entry_err)?;
        crate::validate::server_url("url", &s.url).map_err(entry_err)?;
        if !s.load.is_finite() || s.load < 0.0 {
            return Err(entry_err(crate::validate::FieldError::new(
                "load",
                "must be a finite number >= 0",
            )));
        }
        if !seen.insert(s.id.as_str()) {
            return Err(SnapshotError::DuplicateId(s.id.clone()));
        }
    }
    if next.version < current.version() {
        return Err(SnapshotError::VersionWentBack {
            current: current.version(),
            new: next.version,
        });
    }
    let previous = current.len();
    if previous > 0 && next.servers.is_empty() {
        return Err(SnapshotError::Empty { previous });
    }
    if previous >= 4 {
        let gone = current
            .servers()
            .iter()
            .filter(|s| !seen.contains(s.id.as_str()))
            .count();
        if gone * 2 > previous {
            return Err(SnapshotError::MassEviction { gone, previous });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, region: &str, load: f64) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            region: region.into(),
            url: format!("http://127.0.0.1/{id}"),
            load,
            healthy: true,
            draining: false,
            last_seen_ms: 0,
        }
    }

    fn snap(version: u64, servers: Vec<ServerEntry>) -> Snapshot {
        Snapshot {
            version,
            servers,
            revoked_families: vec![],
        }
    }

    #[test]
    fn least_loaded_skips_draining_and_unhealthy() {
        let mut d = entry("a", "eu", 0.0);
        d.draining = true;
        let mut u = entry("b", "eu", 0.0);
        u.healthy = false;
        let r = Registry::new(snap(
            1,
            vec![d, u, entry("c", "eu", 5.0), entry("d", "eu", 3.0)],
        ));
        assert_eq!(r.least_loaded_in("eu", |_| false).unwrap().id, "d");
        assert_eq!(r.least_loaded_in("eu", |s| s.id == "d").unwrap().id, "c");
        assert!(r.least_loaded_in("us", |_| false).is_none());
        assert_eq!(r.live_by_region()["eu"], 3);
    }

    #[test]
    fn equal_loads_break_ties_by_id() {
        let r = Registry::new(snap(1, vec![entry("z", "eu", 1.0), entry("m", "eu", 1.0)]));
        assert_eq!(r.least_loaded_anywhere(|_| false).unwrap().id, "m");
    }

    #[test]
    fn snapshot_checks() {
        let four: Vec<_> = (0..4).map(|i| entry(&format!("s{i}"), "eu", 0.0)).collect();
        let cur = Registry::new(snap(5, four.clone()));
        assert!(check_snapshot(&cur, &snap(6, four.clone())).is_ok());
        assert_eq!(
            check_snapshot(&cur, &snap(6, vec![])),
            Err(SnapshotError::Empty { previous: 4 })
        );
        assert!(matches!(
            check_snapshot(&cur, &snap(6, four[..1].to_vec())),
            Err(SnapshotError::MassEviction {
                gone: 3,
                previous: 4
            })
        ));
        assert!(check_snapshot(&cur, &snap(6, four[..2].to_vec())).is_ok());
        assert!(matches!(
            check_snapshot(&cur, &snap(4, four.clone())),
            Err(SnapshotError::VersionWentBack { .. })
        ));
        let mut dup = four.clone();
        dup.push(entry("s0", "us", 0.0));
        assert!(matches!(
            check_snapshot(&cur, &snap(6, dup)),
            Err(SnapshotError::DuplicateId(_))
        ));
        let mut bad = four.clone();
        bad[2].url = "gopher://x".into();
        assert!(matches!(
            check_snapshot(&cur, &snap(6, bad)),
            Err(SnapshotError::BadEntry { index: 2, .. })
        ));
        // A small registry may lose servers, and a first snapshot may be empty.
        let small = Registry::new(snap(1, four[..3].to_vec()));
        assert!(check_snapshot(&small, &snap(2, four[..1].to_vec())).is_ok());
        assert!(check_snapshot(&Registry::default(), &snap(0, vec![])).is_ok());
    }
}
