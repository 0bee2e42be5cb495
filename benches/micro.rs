//! Micro-benchmarks (criterion), `cargo bench --bench micro`: the pieces of
//! the request path and of the registry sync, in isolation.
//!
//! - token verification, HS256: the fast path (a plain valid token, owned
//!   claims, and borrowed with the cache off), a verified-token cache hit
//!   (what the request path does by default), the general `jsonwebtoken`
//!   path (a valid token the fast path declines), and a bad signature (the
//!   401 path);
//! - token verification, EdDSA (Ed25519), as the request path calls it
//!   (`with_access`, borrowed claims): a hit in the verified-token cache,
//!   and with the cache off (`verified_cache_entries = 0`: the signature
//!   checked every time);
//! - the re-placement policy (`placement::place`) with 10 / 1,000 / 10,000
//!   servers;
//! - snapshot validation (`check_snapshot` + `Registry::new`) and an
//!   `ArcSwap` swap while another thread keeps reading;
//! - header sanitising (the strip loop of `headers.rs`).
//!
//! Then prints heap allocations per call (counting allocator). About 45 s.

mod support;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{BatchSize, BenchmarkId, Criterion};
use pingora_http::{RequestHeader, ResponseHeader};
use support::Keys;
use tether_protocol::placement::{self, Hysteresis, Request};
use tether_protocol::registry::{check_snapshot, Registry};
use tether_protocol::wire::{ServerEntry, Snapshot};
use tether_proxy::tokens::{LockTarget, Tokens};

#[global_allocator]
static GLOBAL: support::Counting = support::COUNTING;

const REGIONS: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

/// Tokens verifying with `keys`, and a `Tokens` with the same key ring but
/// the verified-token cache off.
fn tokens_with(keys: Keys) -> (Tokens, Tokens) {
    let dir = support::workdir();
    let path = support::write_tether_config_with(dir.path(), 1, support::addr(2), keys);
    let mut cfg = tether_proxy::config::load(&path).expect("bench proxy config");
    let t = Tokens::new(&cfg.tokens);
    cfg.tokens.verified_cache_entries = 0;
    (t, Tokens::new(&cfg.tokens))
}

/// What the request path does with a token: check it and read `srv`
/// borrowed (`TokenStore::with_access` calls this).
fn check(t: &Tokens, token: &str) -> Option<usize> {
    t.with_access(token, |c| c.srv.len()).ok()
}

fn mint(t: &Tokens, sub: &str) -> String {
    t.mint(
        sub,
        LockTarget {
            server_id: "eu-1",
            region: "eu",
        },
        None,
        None,
    )
    .expect("mint")
    .access
}

fn snapshot(n: usize, version: u64) -> Snapshot {
    let servers = (0..n)
        .map(|i| ServerEntry {
            id: format!("{}-{i}", REGIONS[i % REGIONS.len()]),
            region: REGIONS[i % REGIONS.len()].into(),
            url: format!("http://10.0.{}.{}:8080", i / 250, i % 250),
            load: (i % 17) as f64,
            healthy: true,
            draining: false,
            last_seen_ms: 100,
        })
        .collect();
    Snapshot {
        version,
        servers,
        revoked_families: Vec::new(),
    }
}

fn request_header(spoofed: bool) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/api/cart/42", None).expect("request");
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-request-id", "7f3c2a"),
    ] {
        r.insert_header(k, v).expect("header");
    }
    if spoofed {
        r.insert_header("x-tether-subject", "mallory")
            .expect("header");
        r.insert_header("tether-server-id", "eu-9").expect("header");
    }
    r
}

fn bench_tokens(c: &mut Criterion) {
    let (t, t_nocache) = tokens_with(Keys::Hs256);
    let plain = mint(&t, "alice");
    // An escaped character in a claim: valid, but the fast path declines it.
    let general = mint(&t, "al\"ice");
    let mut bad = plain.clone();
    let last = if bad.ends_with('A') { "B" } else { "A" };
    bad.replace_range(bad.len() - 1.., last);
    // The full checks run on the cache-less `Tokens` (with the cache on,
    // a valid token the fast path declines would be a cache hit).
    assert!(
        t_nocache.verify_access(&plain).is_ok()
            && t_nocache.verify_access(&general).is_ok()
            && t_nocache.verify_access(&bad).is_err()
    );

    let mut g = c.benchmark_group("verify_access HS256");
    g.bench_function("fast path (plain valid token)", |b| {
        b.iter(|| t_nocache.verify_access(black_box(&plain)))
    });
    g.bench_function("fast path, with_access (cache off, borrowed claims)", |b| {
        b.iter(|| check(&t_nocache, black_box(&plain)))
    });
    assert_eq!((t.cached_tokens(), t_nocache.cached_tokens()), (0, 0));
    check(&t, &plain);
    assert_eq!(t.cached_tokens(), 1, "the first check fills the cache");
    g.bench_function("cached (hit), with_access (request path)", |b| {
        b.iter(|| check(&t, black_box(&plain)))
    });
    g.bench_function("general jsonwebtoken path", |b| {
        b.iter(|| t_nocache.verify_access(black_box(&general)))
    });
    g.bench_function("bad signature (401)", |b| {
        b.iter(|| t_nocache.verify_access(black_box(&bad)))
    });
    g.finish();
}

fn bench_tokens_eddsa(c: &mut Criterion) {
    let (cached, uncached) = tokens_with(Keys::EdDsaCached);
    let token = mint(&cached, "alice");
    // The first check fills the cache; every later one is a hit.
    assert!(check(&cached, &token).is_some() && check(&uncached, &token).is_some());
    assert_eq!((cached.cached_tokens(), uncached.cached_tokens()), (1, 0));

    let mut g = c.benchmark_group("verify_access EdDSA");
    g.bench_function("cached (hit), with_access (request path)", |b| {
        b.iter(|| check(&cached, black_box(&token)))
    });
    g.bench_function("uncached (verified_cache_entries = 0), with_access", |b| {
        b.iter(|| check(&uncached, black_box(&token)))
    });
    g.finish();
}

fn bench_placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement::place");
    for n in [10usize, 1_000, 10_000] {
        let reg = Registry::new(snapshot(n, 1));
        // A client of eu-0 whose closest server is in another region.
        let moved = Request {
            current: "eu-0",
            closest: Some("us-1"),
            critical_task: false,
            home_region: None,
            answering: "us-1",
            answering_region: "us",
            confirmed_dead: &[],
            unreachable_by_client: &[],
        };
        // Its server confirmed dead by a probe.
        let dead = ["eu-0"];
        let down = Request {
            confirmed_dead: &dead,
            closest: Some("eu-5"),
            ..moved
        };
        let h = Hysteresis::default();
        assert!(
            placement::place(&reg, &moved, &h).is_ok() && placement::place(&reg, &down, &h).is_ok()
        );
        g.bench_with_input(BenchmarkId::new("moved_region", n), &n, |b, _| {
            b.iter(|| placement::place(black_box(&reg), black_box(&moved), &h).map(|d| d.changed))
        });
        g.bench_with_input(BenchmarkId::new("server_down", n), &n, |b, _| {
            b.iter(|| placement::place(black_box(&reg), black_box(&down), &h).map(|d| d.changed))
        });
    }
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    for n in [10usize, 1_000, 10_000] {
        let current = Registry::new(snapshot(n, 1));
        let next = snapshot(n, 2);
        assert!(check_snapshot(&current, &next).is_ok());
        g.bench_with_input(BenchmarkId::new("check + Registry::new", n), &n, |b, _| {
            b.iter_batched(
                || next.clone(),
                |s| {
                    check_snapshot(&current, &s)
                        .map(|()| Registry::new(s))
                        .map(|r| r.len())
                },
                BatchSize::LargeInput,
            )
        });
    }

    // One swap while a reader thread loads the registry in a tight loop
    // (the request path reads it with one `load`).
    let shared = Arc::new(ArcSwap::from_pointee(Registry::new(snapshot(1_000, 1))));
    let next = Arc::new(Registry::new(snapshot(1_000, 2)));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_add(shared.load().len());
            }
            n
        })
    };
    g.bench_function(
        "ArcSwap store (1,000 servers) under a concurrent reader",
        |b| b.iter(|| shared.store(next.clone())),
    );
    g.bench_function("ArcSwap load under a concurrent reader", |b| {
        b.iter(|| shared.load().len())
    });
    stop.store(true, Ordering::Relaxed);
    black_box(reader.join().expect("reader"));
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("header sanitising");
    let mut clean = request_header(false);
    g.bench_function("request, nothing to strip (9 headers)", |b| {
        b.iter(|| tether_proxy::headers::strip_internal_request_headers(black_box(&mut clean)))
    });
    let spoofed = request_header(true);
    g.bench_function("request, 2 spoofed headers (clone + strip)", |b| {
        b.iter_batched(
            || spoofed.clone(),
            |mut r| {
                tether_proxy::headers::strip_internal_request_headers(&mut r);
                r
            },
            BatchSize::SmallInput,
        )
    });
    let mut resp = ResponseHeader::build(200, None).expect("response");
    for (k, v) in [
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("cache-control", "no-store"),
    ] {
        resp.insert_header(k, v).expect("header");
    }
    g.bench_function("response, nothing to strip (3 headers)", |b| {
        b.iter(|| tether_proxy::headers::strip_lock_response_headers(black_box(&mut resp)))
    });
    g.finish();
}

/// Heap allocations per call, counted.
fn allocations() {
    fn count<R>(n: u64, mut f: impl FnMut() -> R) -> f64 {
        tether_testkit::alloc::count_process(true);
        let before = tether_testkit::alloc::process_allocs();
        for _ in 0..n {
            black_box(f());
        }
        let after = tether_testkit::alloc::process_allocs();
        tether_testkit::alloc::count_process(false);
        (after - before) as f64 / n as f64
    }
    let (t, t_nocache) = tokens_with(Keys::Hs256);
    let plain = mint(&t, "alice");
    let general = mint(&t, "al\"ice");
    let mut clean = request_header(false);
    let reg = Registry::new(snapshot(1_000, 1));
    let req = Request {
        current: "eu-0",
        closest: Some("us-1"),
        critical_task: false,
        home_region: None,
        answering: "us-1",
        answering_region: "us",
        confirmed_dead: &[],
        unreachable_by_client: &[],
    };
    println!();
    println!("heap allocations per call:");
    println!(
        "  verify_access, fast path:       {:.1} (the owned claims' strings)",
        count(10_000, || t_nocache.verify_access(&plain))
    );
    println!(
        "  with_access, fast path:         {:.1} (cache off: claims borrowed)",
        count(10_000, || check(&t_nocache, &plain))
    );
    check(&t, &plain);
    println!(
        "  with_access, HS256 cache hit:   {:.1} (the request path)",
        count(10_000, || check(&t, &plain))
    );
    println!(
        "  verify_access, general path:    {:.1}",
        count(10_000, || t_nocache.verify_access(&general))
    );
    let (ed_cached, ed_uncached) = tokens_with(Keys::EdDsaCached);
    let ed = mint(&ed_cached, "alice");
    check(&ed_cached, &ed);
    println!(
        "  with_access, EdDSA cache hit:   {:.1}",
        count(10_000, || check(&ed_cached, &ed))
    );
    println!(
        "  verify_access, EdDSA cached:    {:.1} (a copy of the cached claims)",
        count(10_000, || ed_cached.verify_access(&ed))
    );
    println!(
        "  with_access, EdDSA uncached:    {:.1}",
        count(1_000, || check(&ed_uncached, &ed))
    );
    println!(
        "  strip request headers (clean):  {:.1}",
        count(10_000, || {
            tether_proxy::headers::strip_internal_request_headers(&mut clean)
        })
    );
    println!(
        "  placement::place (1,000):       {:.1}",
        count(1_000, || placement::place(
            &reg,
            &req,
            &Hysteresis::default()
        )
        .map(|d| d.changed))
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_tokens(&mut c);
    bench_tokens_eddsa(&mut c);
    bench_placement(&mut c);
    bench_snapshot(&mut c);
    bench_headers(&mut c);
    c.final_summary();
    allocations();
}
