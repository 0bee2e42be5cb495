//! The lock decision allocates nothing: checking a valid HS256 access
//! token and deciding where its request goes (registry lookup included)
//! makes no heap allocation. Counted with the test kit's counting allocator in
//! this test binary (one test, so no other thread allocates meanwhile).

use std::time::Duration;

use tether_protocol::registry::Registry;
use tether_protocol::wire::{ServerEntry, Snapshot};
use tether_proxy::config::{DownPolicy, TokenConfig};
use tether_proxy::lock::{self, Route};
use tether_proxy::registry::RegistryView;
use tether_proxy::tokens::{KeyRing, LockTarget, Tokens};

use tether_testkit::alloc::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting::SYSTEM;

fn entry(id: &str, region: &str) -> ServerEntry {
    ServerEntry {
        id: id.into(),
        region: region.into(),
        url: format!("http://127.0.0.1:1/{id}"),
        load: 0.0,
        healthy: true,
        draining: false,
        last_seen_ms: 0,
    }
}

#[test]
fn valid_hs256_token_check_and_lock_decision_allocate_nothing() {
    let ring = KeyRing::parse(
        &format!(
            "signing_kid = \"k1\"\n[[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{}\"\n",
            "ab".repeat(32)
        ),
        "test",
    )
    .unwrap();
    let tokens = Tokens::new(&TokenConfig {
        issuer: "tether".into(),
        audience: "app".into(),
        access_ttl: Duration::from_secs(120),
        refresh_ttl: Duration::from_secs(7 * 86400),
        leeway: Duration::from_secs(5),
        keyring_path: "test".into(),
        keyring: ring,
        refresh_rotation: true,
        when_discovery_down: DownPolicy::FailClosed,
        max_extend: std::time::Duration::from_secs(21_600),
        verified_cache_entries: 0,
    });
    let view = RegistryView {
        registry: Registry::new(Snapshot {
            version: 1,
            servers: (0..1000)
                .map(|i| entry(&format!("srv-{i}"), "eu"))
                .collect(),
            revoked_families: vec!["some-other-family".into()],
        }),
        peers: Default::default(),
    };
    let local = tokens
        .mint(
            "alice",
            LockTarget {
                server_id: "eu-1",
                region: "eu",
            },
            None,
            None,
        )
        .unwrap()
        .access;
    let foreign = tokens
        .mint(
            "bob",
            LockTarget {
                server_id: "srv-7",
                region: "eu",
            },
            None,
            None,
        )
        .unwrap()
        .access;

    let decide = |token: &str| {
        tokens
            .with_access(token, |c| {
                if view.registry.is_revoked(c.fam) {
                    return 0;
                }
                match lock::decide(&view, "eu-1", c.srv, |_| false) {
                    Route::Local => 1,
                    Route::Foreign(..) => 2,
                    Route::Unavailable => 3,
                }
            })
            .unwrap()
    };
    // Warm up (lazy statics, first-use tables).
    assert_eq!(decide(&local), 1);
    assert_eq!(decide(&foreign), 2);

    alloc::count_process(true);
    let before = alloc::process_allocs();
    let mut routes = 0;
    for _ in 0..1000 {
        routes += decide(&local) + decide(&foreign);
    }
    let allocs = alloc::process_allocs() - before;
    assert_eq!(routes, 3000);
    assert_eq!(
        allocs, 0,
        "heap allocations in 2,000 token checks and lock decisions"
    );
}
