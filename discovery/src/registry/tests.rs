use super::*;

const TTL: Duration = Duration::from_secs(6);

fn registry() -> Registry {
    Registry::new(TTL, 1000, Arc::new(Metrics::new().unwrap()))
}

fn hb(id: &str, load: f64) -> Heartbeat {
    Heartbeat {
        id: id.into(),
        region: "eu".into(),
        url: format!("http://127.0.0.1:9000/{id}"),
        load,
        healthy: true,
        draining: false,
    }
}

fn parsed(r: &Registry, now: Instant) -> Snapshot {
    serde_json::from_slice(&r.listing(now).body).unwrap()
}

#[test]
fn listing_bytes_match_the_typed_snapshot() {
    let r = registry();
    let t0 = Instant::now();
    let mut odd = hb("b", 1.25);
    odd.url = "http://h/a\"b\\c".into();
    r.heartbeat(odd, t0).unwrap();
    r.heartbeat(hb("a", 0.0), t0 + Duration::from_millis(5))
        .unwrap();
    let now = t0 + Duration::from_millis(1500);
    let typed = r.snapshot(now);
    assert_eq!(parsed(&r, now), typed);
    assert_eq!(
        typed
            .servers
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(typed.servers[1].last_seen_ms, 1500);
    assert_eq!(typed.servers[1].url, "http://h/a\"b\\c");
    assert_eq!(typed.version, 1002);
    let empty = registry();
    assert_eq!(
        parsed(&empty, now),
        Snapshot {
            version: 1000,
            servers: vec![],
            revoked_families: vec![],
        }
    );
}

#[test]
fn steady_heartbeats_do_not_bump_the_version() {
    let r = registry();
    let t0 = Instant::now();
    let v1 = r.heartbeat(hb("a", 10.0), t0).unwrap();
    // 10.0 -> 10.9: more than 0.5 but under 10%: stored, no bump.
    let v2 = r
        .heartbeat(hb("a", 10.9), t0 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(v1, v2);
    assert_eq!(
        r.snapshot(t0 + Duration::from_secs(1)).servers[0].load,
        10.9
    );
    assert_eq!(
        r.snapshot(t0 + Duration::from_secs(1)).servers[0].last_seen_ms,
        0
    );
    // 10.9 -> 12.5: material.
    let v3 = r
        .heartbeat(hb("a", 12.5), t0 + Duration::from_secs(2))
        .unwrap();
    assert_eq!(v3, v2 + 1);
    // 0 -> 0.4: under 0.5 absolute.
    let v4 = r.heartbeat(hb("z", 0.0), t0).unwrap();
    assert_eq!(r.heartbeat(hb("z", 0.4), t0).unwrap(), v4);
    for (field, change) in [
        (
            "healthy",
            Heartbeat {
                healthy: false,
                ..hb("z", 0.4)
            },
        ),
        (
            "draining",
            Heartbeat {
                draining: true,
                ..hb("z", 0.4)
            },
        ),
        (
            "region",
            Heartbeat {
                region: "us".into(),
                ..hb("z", 0.4)
            },
        ),
    ] {
        let before = r.version();
        assert_eq!(r.heartbeat(change, t0).unwrap(), before + 1, "{field}");
    }
}

#[test]
fn material_load_rule() {
    assert!(!load_changed_materially(0.0, 0.5));
    assert!(load_changed_materially(0.0, 0.6));
    assert!(!load_changed_materially(100.0, 109.0));
    assert!(load_changed_materially(100.0, 111.0));
    assert!(load_changed_materially(100.0, 80.0));
}

#[test]
fn conflicts_leave_the_entry_alone_until_it_expires() {
    let r = registry();
    let t0 = Instant::now();
    r.heartbeat(hb("a", 1.0), t0).unwrap();
    let v = r.version();
    let mut other = hb("a", 1.0);
    other.url = "http://elsewhere:1".into();
    let err = r
        .heartbeat(other.clone(), t0 + Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, HeartbeatRejected::IdConflict { .. }));
    assert_eq!(r.version(), v);
    // The conflicting heartbeat did not refresh the holder.
    assert_eq!(
        r.snapshot(t0 + Duration::from_secs(5)).servers[0].last_seen_ms,
        5000
    );
    // Past the TTL the id is free, even before any sweep.
    let v2 = r.heartbeat(other, t0 + TTL).unwrap();
    assert!(v2 > v);
    assert_eq!(r.snapshot(t0 + TTL).servers[0].url, "http://elsewhere:1");
}

#[test]
fn eviction_at_the_ttl_on_sweep_and_on_read() {
    let r = registry();
    let t0 = Instant::now();
    r.heartbeat(hb("a", 1.0), t0).unwrap();
    r.heartbeat(hb("b", 1.0), t0 + Duration::from_secs(2))
        .unwrap();
    let just_before = t0 + TTL - Duration::from_millis(1);
    assert_eq!(
        r.sweep(just_before),
        Sweep {
            evicted: 0,
            next_expiry: Some(t0 + TTL)
        }
    );
    let v = r.version();
    // A read evicts lazily.
    let s = parsed(&r, t0 + TTL);
    assert_eq!(s.servers.len(), 1);
    assert_eq!(s.version, v + 1);
    let sweep = r.sweep(t0 + TTL);
    assert_eq!(
        sweep,
        Sweep {
            evicted: 0,
            next_expiry: Some(t0 + Duration::from_secs(2) + TTL)
        }
    );
    assert_eq!(r.sweep(t0 + Duration::from_secs(9)).evicted, 1);
    assert_eq!(r.sweep(t0 + Duration::from_secs(9)).next_expiry, None);
    assert_eq!(r.version(), v + 2);
}

#[test]
fn admin_drain_is_sticky_until_undone() {
    let r = registry();
    let t0 = Instant::now();
    r.heartbeat(hb("a", 1.0), t0).unwrap();
    let v = r.version();
    let e = r.set_admin_drain("a", true, t0).unwrap();
    assert!(e.draining);
    assert_eq!(r.version(), v + 1);
    // Draining again changes nothing.
    r.set_admin_drain("a", true, t0).unwrap();
    assert_eq!(r.version(), v + 1);
    r.heartbeat(hb("a", 1.0), t0).unwrap();
    assert!(r.snapshot(t0).servers[0].draining);
    assert_eq!(r.version(), v + 1);
    let e = r.set_admin_drain("a", false, t0).unwrap();
    assert!(!e.draining);
    assert_eq!(r.version(), v + 2);
    assert!(r.set_admin_drain("nope", true, t0).is_none());
    // An expired server cannot be drained.
    assert!(r.set_admin_drain("a", true, t0 + TTL).is_none());
}

#[test]
fn watchers_see_each_change() {
    let r = registry();
    let mut rx = r.subscribe();
    assert!(!rx.has_changed().unwrap());
    let v = r.heartbeat(hb("a", 1.0), Instant::now()).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), v);
    r.heartbeat(hb("a", 1.0), Instant::now()).unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn deltas_follow_changes_and_fall_back_to_full() {
    let r = registry();
    let t0 = Instant::now();
    r.heartbeat(hb("a", 1.0), t0).unwrap();
    r.heartbeat(hb("b", 1.0), t0).unwrap();
    let v1 = r.version();
    // Nothing since v1.
    let d = r.delta(v1, t0);
    assert!(!d.full && d.changed.is_empty() && d.removed.is_empty());
    // One material change, one drain, one revocation.
    r.heartbeat(hb("a", 50.0), t0).unwrap();
    r.set_admin_drain("b", true, t0).unwrap();
    r.set_revoked_families(vec!["f1".into()]);
    let d = r.delta(v1, t0);
    let ids: Vec<_> = d.changed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(d.changed[1].draining);
    assert_eq!(d.revoked_families, vec!["f1".to_owned()]);
    let v2 = d.version;
    // Evictions show up as removals; a since from before the start, or
    // from the future, gets everything.
    r.heartbeat(hb("c", 1.0), t0 + TTL / 2).unwrap();
    let later = t0 + TTL + Duration::from_millis(1);
    let d = r.delta(v2, later);
    assert_eq!(d.removed, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(d.changed.len(), 1);
    assert!(r.delta(999, later).full);
    assert!(r.delta(d.version + 1, later).full);
    let full = r.delta(0, later);
    assert_eq!(full.changed.len(), 1);
    assert_eq!(full.revoked_families, vec!["f1".to_owned()]);
}
