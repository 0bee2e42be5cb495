//! `GET /v1/servers?since=<version>` (docs/design.md §6a): what changed in the
//! registry after a version the caller already holds, so a proxy polling
//! a large registry downloads one entry per change instead of every
//! server.
//!
//! One shape for both answers, so a consumer has one code path:
//! - `full: false`: apply `removed`, then `changed` (an entry replaces the
//!   one with the same id), then add `revokedFamilies` to the set already
//!   held;
//! - `full: true` (the `since` was unknown to that node, or older than what
//!   it can answer: etcd compaction, a restart, the in-memory store's
//!   bounded change log): `changed` is every server, `revokedFamilies`
//!   every revocation, `removed` is empty; replace everything.
//!
//! [`Delta::apply`] does exactly that to a [`Snapshot`].

use serde::{Deserialize, Serialize};

use crate::wire::{ServerEntry, Snapshot};

/// The `?since=` answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta {
    /// The registry version this answer brings the caller to.
    pub version: u64,
    /// True when this is the whole registry rather than a difference.
    pub full: bool,
    /// Servers added or changed after `since` (all servers when `full`).
    #[serde(default)]
    pub changed: Vec<ServerEntry>,
    /// Ids of servers gone after `since` (evicted, or their key expired).
    #[serde(default)]
    pub removed: Vec<String>,
    /// Refresh families revoked after `since` (all live revocations when
    /// `full`). Revocations are never withdrawn before their tokens
    /// expire, so a consumer may keep the ones it holds until its next
    /// full answer.
    #[serde(default)]
    pub revoked_families: Vec<String>,
}

impl Delta {
    /// Brings `snapshot` to this answer's version. Entries stay sorted by
    /// id (the order of a full listing) and revoked families sorted and
    /// unique.
    pub fn apply(&self, snapshot: &mut Snapshot) {
        if self.full {
            snapshot.servers = self.changed.clone();
            snapshot.servers.sort_by(|a, b| a.id.cmp(&b.id));
            snapshot.revoked_families = self.revoked_families.clone();
        } else {
            snapshot.servers.retain(|s| !self.removed.contains(&s.id));
            for entry in &self.changed {
                match snapshot.servers.binary_search_by(|s| s.id.cmp(&entry.id)) {
                    Ok(i) => snapshot.servers[i] = entry.clone(),
                    Err(i) => snapshot.servers.insert(i, entry.clone()),
                }
            }
            snapshot
                .revoked_families
                .extend(self.revoked_families.iter().cloned());
        }
        snapshot.revoked_families.sort();
        snapshot.revoked_families.dedup();
        snapshot.version = self.version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, load: f64) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            region: "eu".into(),
            url: format!("http://{id}"),
            load,
            healthy: true,
            draining: false,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn apply_partial_and_full() {
        let mut s = Snapshot {
            version: 10,
            servers: vec![entry("a", 1.0), entry("b", 1.0), entry("d", 1.0)],
            revoked_families: vec!["f1".into()],
        };
        Delta {
            version: 12,
            full: false,
            changed: vec![entry("c", 2.0), entry("a", 5.0)],
            removed: vec!["d".into()],
            revoked_families: vec!["f0".into(), "f1".into()],
        }
        .apply(&mut s);
        let ids: Vec<_> = s.servers.iter().map(|e| (e.id.as_str(), e.load)).collect();
        assert_eq!(ids, vec![("a", 5.0), ("b", 1.0), ("c", 2.0)]);
        assert_eq!(s.revoked_families, vec!["f0".to_owned(), "f1".to_owned()]);
        assert_eq!(s.version, 12);
        Delta {
            version: 20,
            full: true,
            changed: vec![entry("z", 0.0)],
            removed: vec![],
            revoked_families: vec![],
        }
        .apply(&mut s);
        assert_eq!(s.servers, vec![entry("z", 0.0)]);
        assert!(s.revoked_families.is_empty());
    }

    #[test]
    fn wire_names() {
        let d: Delta = serde_json::from_str(
            r#"{"version":3,"full":false,"changed":[],"removed":["x"],"revokedFamilies":["f"]}"#,
        )
        .unwrap();
        assert_eq!(d.removed, vec!["x".to_owned()]);
        assert_eq!(d.revoked_families, vec!["f".to_owned()]);
    }
}
