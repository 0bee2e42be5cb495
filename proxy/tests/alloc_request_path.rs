//! Heap allocations of request-path helpers, counted: a cached (EdDSA or HS256)
//! access-token check allocates nothing (the subject's header value it
//! hands out included), and the `X-Forwarded-For` / `Forwarded` values
//! cost one allocation for the two (one each behind a long trusted chain).
//!
//! The test kit's counting allocator counts per thread here (a `const`
//! thread-local, so the allocator itself never allocates to count), so the
//! tests of this binary may run in parallel.

use std::net::IpAddr;
use std::time::Duration;

use tether_proxy::config::{DownPolicy, TokenConfig};
use tether_proxy::headers::forwarded_values;
use tether_proxy::tokens::{KeyRing, LockTarget, Tokens};

use tether_testkit::alloc::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting::SYSTEM;

/// This thread's allocations so far (counting switched on first).
fn allocs() -> u64 {
    alloc::count_threads(true);
    alloc::thread_allocs()
}

fn tokens_with(ring: &str, cache_entries: usize) -> Tokens {
    let ring = KeyRing::parse(ring, "test").unwrap();
    Tokens::new(&TokenConfig {
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
        verified_cache_entries: cache_entries,
    })
}

#[test]
fn cached_eddsa_token_check_allocates_nothing() {
    cached_check_allocates_nothing(&tether_proxy::secrets::keyring_text_eddsa("ed1"), "EdDSA");
}

#[test]
fn cached_hs256_token_check_allocates_nothing() {
    cached_check_allocates_nothing(&tether_proxy::secrets::keyring_text("k1"), "HS256");
}

fn cached_check_allocates_nothing(ring: &str, alg: &str) {
    let tokens = tokens_with(ring, 100);
    let token = tokens
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
    let check = |t: &Tokens| t.with_access(&token, |c| c.srv == "eu-1").unwrap();
    // The first check verifies the signature and fills the cache.
    assert!(check(&tokens));
    assert_eq!(tokens.cached_tokens(), 1);

    let before = allocs();
    let mut ok = 0;
    for _ in 0..1000 {
        ok += usize::from(check(&tokens));
    }
    let hits = allocs() - before;
    assert_eq!(ok, 1000);
    assert_eq!(hits, 0, "heap allocations in 1,000 cached {alg} checks");

    // The subject's header value, as the request path takes it for
    // `X-Tether-Subject`: a shared clone, not a copy.
    let before = allocs();
    for _ in 0..1000 {
        let v = tokens
            .with_access(&token, |c| c.subject.cloned())
            .unwrap()
            .expect("a cached subject value");
        assert_eq!(v, "alice");
    }
    assert_eq!(
        allocs() - before,
        0,
        "heap allocations in 1,000 cached {alg} checks taking the subject value"
    );

    // Without the cache every check verifies the signature (EdDSA: the
    // general path, which owns its claims and allocates; HS256: the fast
    // path, which does not).
    let uncached = tokens_with(ring, 0);
    assert!(check(&uncached));
    let before = allocs();
    assert!(check(&uncached));
    assert_eq!(
        allocs() > before,
        alg == "EdDSA",
        "{alg} uncached allocations"
    );
    assert_eq!(uncached.cached_tokens(), 0);
}

#[test]
fn forwarded_values_cost_one_allocation_for_both() {
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
    let long_xff = ["203.0.113.9"; 12].join(", ");
    let long_fwd = ["for=203.0.113.9"; 12].join(", ");
    for (ip, proto, prior_xff, prior_fwd, want_xff, want_fwd, want_allocs) in [
        (
            v4,
            "http",
            None,
            None,
            "192.0.2.7".to_owned(),
            "for=192.0.2.7;proto=http".to_owned(),
            1,
        ),
        (
            v4,
            "http",
            Some("203.0.113.9"),
            Some("for=203.0.113.9"),
            "203.0.113.9, 192.0.2.7".to_owned(),
            "for=203.0.113.9, for=192.0.2.7;proto=http".to_owned(),
            1,
        ),
        (
            // The longest address text (39 bytes), quoted for `Forwarded`:
            // 98 bytes for the two values.
            v6,
            "https",
            None,
            None,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".to_owned(),
            "for=\"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]\";proto=https".to_owned(),
            1,
        ),
        (
            // An empty prior value counts as none (no leading ", ").
            v4,
            "http",
            Some(""),
            Some(""),
            "192.0.2.7".to_owned(),
            "for=192.0.2.7;proto=http".to_owned(),
            1,
        ),
        (
            // A chain too long for the shared buffer: one buffer each.
            v4,
            "http",
            Some(long_xff.as_str()),
            Some(long_fwd.as_str()),
            format!("{long_xff}, 192.0.2.7"),
            format!("{long_fwd}, for=192.0.2.7;proto=http"),
            2,
        ),
    ] {
        let before = allocs();
        let (xff, fwd) = forwarded_values(ip, proto, prior_xff, prior_fwd).unwrap();
        let n = allocs() - before;
        assert_eq!(xff, want_xff.as_str());
        assert_eq!(fwd, want_fwd.as_str());
        assert_eq!(n, want_allocs, "allocations for {ip} (prior {prior_xff:?})");
        // The values outlive each other: dropping one leaves the other
        // intact (they share one reference-counted buffer).
        drop(xff);
        assert_eq!(fwd, want_fwd.as_str());
    }
    assert!(
        long_xff.len() + long_fwd.len() > tether_proxy::headers::PAIR_BYTES,
        "the long case must not fit"
    );
}
