use super::*;
use crate::wire::Snapshot;

fn s(id: &str, region: &str, load: f64) -> ServerEntry {
    ServerEntry {
        id: id.into(),
        region: region.into(),
        url: format!("http://127.0.0.1:1/{id}"),
        load,
        healthy: true,
        draining: false,
        last_seen_ms: 0,
    }
}

fn draining(mut e: ServerEntry) -> ServerEntry {
    e.draining = true;
    e
}

fn unhealthy(mut e: ServerEntry) -> ServerEntry {
    e.healthy = false;
    e
}

fn reg(servers: Vec<ServerEntry>) -> Registry {
    Registry::new(Snapshot {
        version: 1,
        servers,
        revoked_families: vec![],
    })
}

/// eu-1 (answering), eu-2, us-1, us-2, ap-1; all idle.
fn world() -> Vec<ServerEntry> {
    vec![
        s("eu-1", "eu", 0.0),
        s("eu-2", "eu", 0.0),
        s("us-1", "us", 0.0),
        s("us-2", "us", 0.0),
        s("ap-1", "ap", 0.0),
    ]
}

fn req(current: &'static str) -> Request<'static> {
    Request {
        current,
        closest: None,
        critical_task: false,
        home_region: None,
        answering: "eu-1",
        answering_region: "eu",
        confirmed_dead: &[],
    }
}

fn run(r: &Registry, q: Request<'_>) -> (String, Reason, bool) {
    let d = place(r, &q, &Hysteresis::default()).expect("a placement");
    (d.server.id.clone(), d.reason, d.changed)
}

fn expect(r: &Registry, q: Request<'_>, id: &str, reason: Reason) {
    let (got, why, changed) = run(r, q);
    assert_eq!((got.as_str(), why), (id, reason), "request {q:?}");
    assert_eq!(changed, id != q.current, "changed flag for {q:?}");
}

// ---- rule 1: current server gone ----

#[test]
fn dead_current_moves_to_closest() {
    let mut w = world();
    w.retain(|e| e.id != "us-1");
    let r = reg(w);
    expect(
        &r,
        Request {
            closest: Some("eu-2"),
            ..req("us-1")
        },
        "eu-2",
        Reason::ServerDown,
    );
}

#[test]
fn dead_current_moves_even_with_critical_task() {
    let mut w = world();
    w.retain(|e| e.id != "us-1");
    let r = reg(w);
    expect(
        &r,
        Request {
            closest: Some("us-2"),
            critical_task: true,
            ..req("us-1")
        },
        "us-2",
        Reason::ServerDown,
    );
}

#[test]
fn unhealthy_current_counts_as_dead() {
    let mut w = world();
    w[2] = unhealthy(w[2].clone());
    let r = reg(w);
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            ..req("us-1")
        },
        "us-2",
        Reason::ServerDown,
    );
}

#[test]
fn probe_confirmed_dead_overrides_registry() {
    let r = reg(world());
    let q = Request {
        closest: Some("us-1"),
        confirmed_dead: &["us-1"],
        ..req("us-1")
    };
    expect(&r, q, "us-2", Reason::ServerDown);
}

#[test]
fn probe_of_another_server_does_not_move_a_live_lock() {
    let r = reg(world());
    let q = Request {
        closest: Some("eu-1"),
        confirmed_dead: &["us-2"],
        ..req("eu-1")
    };
    expect(&r, q, "eu-1", Reason::Kept);
}

#[test]
fn dead_current_with_draining_closest_takes_least_loaded_of_its_region() {
    let mut w = world();
    w.retain(|e| e.id != "eu-1");
    w[0] = draining(w[0].clone()); // eu-2 draining
    w.push(s("eu-3", "eu", 4.0));
    w.push(s("eu-4", "eu", 1.0));
    let r = reg(w);
    expect(
        &r,
        Request {
            closest: Some("eu-2"),
            ..req("eu-1")
        },
        "eu-4",
        Reason::ServerDown,
    );
}

#[test]
fn dead_current_falls_back_to_answering_region_then_anywhere() {
    // Closest region "ap" has only a draining server.
    let mut w = world();
    w.retain(|e| e.id != "us-1");
    let ap = w.iter_mut().find(|e| e.id == "ap-1").unwrap();
    ap.draining = true;
    let r = reg(w.clone());
    let (id, why, _) = run(
        &r,
        Request {
            closest: Some("ap-1"),
            ..req("us-1")
        },
    );
    assert_eq!(why, Reason::ServerDown);
    assert!(
        id == "eu-1" || id == "eu-2",
        "answering region first, got {id}"
    );

    // Neither closest nor answering region has anyone: anywhere.
    let only_us = reg(vec![s("us-2", "us", 3.0), draining(s("ap-1", "ap", 0.0))]);
    expect(
        &only_us,
        Request {
            closest: Some("ap-1"),
            ..req("us-1")
        },
        "us-2",
        Reason::ServerDown,
    );
}

#[test]
fn dead_current_with_no_server_at_all_is_an_error() {
    let r = reg(vec![
        draining(s("eu-1", "eu", 0.0)),
        unhealthy(s("eu-2", "eu", 0.0)),
    ]);
    assert_eq!(
        place(&r, &req("us-1"), &Hysteresis::default()),
        Err(PlacementError::NoServerAvailable)
    );
    assert_eq!(
        place(&reg(vec![]), &req("us-1"), &Hysteresis::default()),
        Err(PlacementError::NoServerAvailable)
    );
}

#[test]
fn dead_current_prefers_home_region() {
    let mut w = world();
    w.retain(|e| e.id != "eu-1");
    let r = reg(w);
    let q = Request {
        closest: Some("eu-2"),
        home_region: Some("us"),
        ..req("eu-1")
    };
    let (id, why, changed) = run(&r, q);
    assert!(id.starts_with("us-"), "{id}");
    assert_eq!(why, Reason::ServerDown);
    assert!(changed);
}

#[test]
fn dead_closest_is_not_chosen() {
    let mut w = world();
    w.retain(|e| e.id != "us-1");
    let r = reg(w);
    let q = Request {
        closest: Some("us-2"),
        confirmed_dead: &["us-2"],
        ..req("us-1")
    };
    // us-1 gone from the registry, us-2 probe-dead: region us is empty, so
    // the answering region takes over.
    let (id, why, _) = run(&r, q);
    assert_eq!(why, Reason::ServerDown);
    assert!(id.starts_with("eu-"), "{id}");
}

// ---- rule 2: critical task ----

#[test]
fn critical_task_keeps_lock_when_closest_is_elsewhere() {
    let r = reg(world());
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            critical_task: true,
            ..req("eu-1")
        },
        "eu-1",
        Reason::CriticalTask,
    );
}

#[test]
fn critical_task_keeps_a_draining_server() {
    let mut w = world();
    w[0] = draining(w[0].clone());
    let r = reg(w);
    expect(
        &r,
        Request {
            critical_task: true,
            ..req("eu-1")
        },
        "eu-1",
        Reason::CriticalTask,
    );
}

#[test]
fn critical_task_beats_home_region() {
    let r = reg(world());
    let q = Request {
        critical_task: true,
        home_region: Some("us"),
        ..req("eu-1")
    };
    expect(&r, q, "eu-1", Reason::CriticalTask);
}

// ---- rule 3: home region ----

#[test]
fn home_user_in_home_region_stays() {
    let r = reg(world());
    let q = Request {
        closest: Some("ap-1"),
        home_region: Some("eu"),
        ..req("eu-2")
    };
    expect(&r, q, "eu-2", Reason::Kept);
}

#[test]
fn home_user_elsewhere_moves_home() {
    let r = reg(world());
    let q = Request {
        closest: Some("eu-1"),
        home_region: Some("us"),
        ..req("eu-1")
    };
    let (id, why, changed) = run(&r, q);
    assert_eq!(why, Reason::HomeRegion);
    assert!(id.starts_with("us-") && changed, "{id}");
}

#[test]
fn home_user_on_busy_home_server_moves_to_least_loaded_home_server() {
    let r = reg(vec![
        s("us-1", "us", 50.0),
        s("us-2", "us", 3.0),
        s("eu-1", "eu", 0.0),
    ]);
    let q = Request {
        home_region: Some("us"),
        ..req("us-1")
    };
    expect(&r, q, "us-2", Reason::HomeRegion);
}

#[test]
fn home_user_on_slightly_busier_home_server_stays() {
    let r = reg(vec![
        s("us-1", "us", 4.0),
        s("us-2", "us", 3.0),
        s("eu-1", "eu", 0.0),
    ]);
    let q = Request {
        home_region: Some("us"),
        ..req("us-1")
    };
    expect(&r, q, "us-1", Reason::Kept);
}

#[test]
fn home_user_on_draining_home_server_moves() {
    let r = reg(vec![
        draining(s("us-1", "us", 0.0)),
        s("us-2", "us", 9.0),
        s("eu-1", "eu", 0.0),
    ]);
    let q = Request {
        home_region: Some("us"),
        ..req("us-1")
    };
    expect(&r, q, "us-2", Reason::HomeRegion);
}

#[test]
fn home_region_without_servers_is_ignored() {
    let r = reg(world());
    let q = Request {
        closest: Some("eu-1"),
        home_region: Some("sa"),
        ..req("eu-2")
    };
    expect(&r, q, "eu-2", Reason::Kept);
    let q = Request {
        closest: Some("us-1"),
        home_region: Some("sa"),
        ..req("eu-2")
    };
    expect(&r, q, "us-1", Reason::MovedRegion);
}

// ---- rule 4: same region ----

#[test]
fn same_region_equal_loads_keep() {
    let r = reg(world());
    expect(
        &r,
        Request {
            closest: Some("eu-1"),
            ..req("eu-2")
        },
        "eu-2",
        Reason::Kept,
    );
}

#[test]
fn same_region_hysteresis_boundary() {
    // best 4.0 → threshold 4 * 1.25 + 2 = 7.0
    let at = reg(vec![s("eu-1", "eu", 4.0), s("eu-2", "eu", 7.0)]);
    expect(&at, req("eu-2"), "eu-2", Reason::Kept);
    let over = reg(vec![s("eu-1", "eu", 4.0), s("eu-2", "eu", 7.01)]);
    expect(&over, req("eu-2"), "eu-1", Reason::SameRegionLeastLoad);
}

#[test]
fn same_region_busy_current_moves_to_least_loaded() {
    let r = reg(vec![
        s("eu-1", "eu", 3.0),
        s("eu-2", "eu", 40.0),
        s("eu-3", "eu", 1.0),
    ]);
    expect(
        &r,
        Request {
            closest: Some("eu-1"),
            ..req("eu-2")
        },
        "eu-3",
        Reason::SameRegionLeastLoad,
    );
}

#[test]
fn same_region_draining_current_moves() {
    let r = reg(vec![draining(s("eu-1", "eu", 0.0)), s("eu-2", "eu", 30.0)]);
    expect(&r, req("eu-1"), "eu-2", Reason::SameRegionLeastLoad);
}

#[test]
fn draining_current_alone_in_region_moves_anywhere_or_stays_if_nothing_else() {
    let r = reg(vec![draining(s("eu-1", "eu", 0.0)), s("us-1", "us", 0.0)]);
    expect(&r, req("eu-1"), "us-1", Reason::MovedRegion);
    let alone = reg(vec![draining(s("eu-1", "eu", 0.0))]);
    expect(&alone, req("eu-1"), "eu-1", Reason::Kept);
}

#[test]
fn default_closest_is_the_answering_server() {
    let r = reg(world());
    // answering eu-1; current us-1 → another region is "closest".
    expect(&r, req("us-1"), "eu-1", Reason::MovedRegion);
    // current eu-2, answering eu-1 → same region, equal loads → kept.
    expect(&r, req("eu-2"), "eu-2", Reason::Kept);
}

#[test]
fn unknown_closest_id_falls_back_to_answering_server() {
    let r = reg(world());
    expect(
        &r,
        Request {
            closest: Some("nope"),
            ..req("eu-2")
        },
        "eu-2",
        Reason::Kept,
    );
    expect(
        &r,
        Request {
            closest: Some("nope"),
            ..req("ap-1")
        },
        "eu-1",
        Reason::MovedRegion,
    );
}

// ---- rule 5: another region ----

#[test]
fn other_region_moves_to_closest() {
    let r = reg(world());
    expect(
        &r,
        Request {
            closest: Some("us-2"),
            ..req("eu-1")
        },
        "us-2",
        Reason::MovedRegion,
    );
}

#[test]
fn other_region_overloaded_closest_yields_least_loaded_there() {
    let r = reg(vec![
        s("eu-1", "eu", 0.0),
        s("us-1", "us", 100.0),
        s("us-2", "us", 5.0),
    ]);
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            ..req("eu-1")
        },
        "us-2",
        Reason::MovedRegion,
    );
}

#[test]
fn other_region_draining_closest_yields_least_loaded_there() {
    let r = reg(vec![
        s("eu-1", "eu", 0.0),
        draining(s("us-1", "us", 0.0)),
        s("us-2", "us", 50.0),
    ]);
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            ..req("eu-1")
        },
        "us-2",
        Reason::MovedRegion,
    );
}

#[test]
fn other_region_with_nobody_eligible_keeps_current() {
    let r = reg(vec![s("eu-1", "eu", 0.0), draining(s("us-1", "us", 0.0))]);
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            ..req("eu-1")
        },
        "eu-1",
        Reason::Kept,
    );
    let r = reg(vec![s("eu-1", "eu", 0.0), unhealthy(s("us-1", "us", 0.0))]);
    expect(
        &r,
        Request {
            closest: Some("us-1"),
            ..req("eu-1")
        },
        "eu-1",
        Reason::Kept,
    );
}

// ---- properties ----

/// Every reason is reachable and no combination of inputs ever places a
/// client on a draining, unhealthy, absent or probe-dead server, except the
/// two documented "keep" cases.
#[test]
fn exhaustive_small_worlds_never_choose_ineligible_servers() {
    let ids = ["eu-1", "eu-2", "us-1", "ap-1"];
    let regions = ["eu", "eu", "us", "ap"];
    let loads = [0.0, 10.0];
    let mut seen = std::collections::HashSet::new();
    // Each server: absent, unhealthy, draining, eligible-idle, eligible-busy.
    for mask in 0..5u32.pow(4) {
        let mut servers = Vec::new();
        let mut m = mask;
        for i in 0..4 {
            let state = m % 5;
            m /= 5;
            let mut e = s(ids[i], regions[i], loads[(state == 4) as usize]);
            match state {
                0 => continue,
                1 => e.healthy = false,
                2 => e.draining = true,
                _ => {}
            }
            servers.push(e);
        }
        let r = reg(servers);
        for current in ids {
            for closest in [None, Some("eu-1"), Some("us-1"), Some("ap-1"), Some("zz-9")] {
                for critical in [false, true] {
                    for home in [None, Some("eu"), Some("us")] {
                        for dead in [None, Some(current), Some("us-1")] {
                            let dead_list: Vec<&str> = dead.into_iter().collect();
                            let q = Request {
                                current,
                                closest,
                                critical_task: critical,
                                home_region: home,
                                answering: "eu-1",
                                answering_region: "eu",
                                confirmed_dead: &dead_list,
                            };
                            let Ok(d) = place(&r, &q, &Hysteresis::default()) else {
                                assert!(
                                    r.least_loaded_anywhere(|e| Some(e.id.as_str()) == dead)
                                        .is_none(),
                                    "no placement although an eligible server exists: {q:?}"
                                );
                                continue;
                            };
                            seen.insert(d.reason);
                            assert_eq!(d.changed, d.server.id != current);
                            assert!(d.server.is_live(), "placed on an unhealthy server: {q:?}");
                            assert_ne!(
                                Some(d.server.id.as_str()),
                                dead,
                                "placed on a dead server: {q:?}"
                            );
                            let cur = r
                                .get(current)
                                .filter(|c| c.is_live() && dead != Some(current));
                            if cur.is_none() {
                                assert_eq!(d.reason, Reason::ServerDown, "{q:?}");
                            }
                            if critical && cur.is_some() {
                                assert_eq!(
                                    (d.reason, d.changed),
                                    (Reason::CriticalTask, false),
                                    "{q:?}"
                                );
                            }
                            if d.server.draining {
                                // Only ever the client's own server, kept.
                                assert!(!d.changed, "moved onto a draining server: {q:?}");
                            }
                            if d.reason == Reason::HomeRegion {
                                assert_eq!(Some(d.server.region.as_str()), home);
                            }
                        }
                    }
                }
            }
        }
    }
    // DiscoveryUnavailable is the proxy's, never `place`'s (§6b).
    for reason in Reason::ALL {
        if reason == Reason::DiscoveryUnavailable {
            assert!(!seen.contains(&reason), "place() never says {reason:?}");
            continue;
        }
        assert!(seen.contains(&reason), "reason {reason:?} never produced");
    }
}

#[test]
fn ten_thousand_servers() {
    let mut servers = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let region = format!("r{}", i % 50);
        // Distinct loads; the least-loaded server of region r7 is r7's first.
        servers.push(s(&format!("srv-{i}"), &region, (i / 50) as f64 + 1.0));
    }
    servers.push(s("idle-7", "r7", 0.0));
    let r = reg(servers);
    assert_eq!(r.len(), 10_001);
    let q = Request {
        current: "srv-3",
        closest: Some("srv-7"),
        critical_task: false,
        home_region: None,
        answering: "srv-0",
        answering_region: "r0",
        confirmed_dead: &[],
    };
    // srv-7 has load 1, the idle one 0: within hysteresis, so the closest itself.
    expect(&r, q, "srv-7", Reason::MovedRegion);
    // A busy closest hands over to the region's least-loaded server.
    let q = Request {
        closest: Some("srv-9957"),
        ..q
    };
    expect(&r, q, "idle-7", Reason::MovedRegion);
    // Removing the current server sends the client to the closest.
    let q = Request {
        confirmed_dead: &["srv-3"],
        closest: Some("srv-7"),
        ..q
    };
    expect(&r, q, "srv-7", Reason::ServerDown);
}

#[test]
fn reasons_have_stable_wire_names() {
    let names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "server_down",
            "critical_task",
            "home_region",
            "kept",
            "same_region_least_load",
            "moved_region",
            "discovery_unavailable"
        ]
    );
}
