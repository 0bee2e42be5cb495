//! Issue 3's bench, `cargo bench --bench proxy`: does the lock check cost
//! anything on top of Pingora itself?
//!
//! Starts a trivial upstream (nginx `return 200`, one worker, or a tiny
//! Rust server), a plain Pingora pass-through (no tether logic, one worker
//! thread) and tether (`target/release/tether proxy`, one worker thread)
//! with an HS256 token locked to itself (verified-token cache on, the
//! default), plus two tethers with an EdDSA (Ed25519) key ring and token,
//! with and without the cache, and an HS256 tether with the cache off;
//! drives each with the same closed-loop load (wrk -t1 -c32,
//! keep-alive) in interleaved rounds and prints requests/s, p50/p99, CPU
//! per request and the ratios tether ÷ plain Pingora and EdDSA ÷ HS256
//! (medians of the rounds). Then counts heap allocations per proxied
//! request in each (counting allocator, in-process), and in the
//! pass-through given tether's upstream timeouts, and prints issue 17's
//! allocation tier against both. Then the
//! `Idempotency-Key` rows (docs/idempotency.md): `POST /` with a small
//! JSON body through an HS256 tether with `[idempotency] enabled = false`
//! (without and with a key header), and without and with a fresh key per
//! request through tethers with the memory store and (when
//! `/usr/bin/redis-server` is there) the Redis store, the bench's own
//! generator for all of them, each store filled past its bound first, then
//! allocations per POST, then the memory store side by side with the
//! `enabled = false` tether (both loaded at once on the proxy core: the
//! target's verdict, since rows run one after another drift by more than
//! the target here). About six minutes. Knobs: `TETHER_BENCH_ROUNDS`
//! (3), `TETHER_BENCH_SECS` (5), `TETHER_BENCH_IDEMPOTENCY_ROUNDS` (the
//! POST rows' rounds, at least 5), `TETHER_BENCH_ONLY=idempotency` (the
//! POST rows alone, JSON in `target/bench-proxy-idempotency.json`).
//! JSON: `target/bench-proxy.json`. The method: docs/benchmarks.md.

mod support;

use std::path::Path;

use support::*;

#[global_allocator]
static GLOBAL: Counting = COUNTING;

fn main() {
    run_role_if_asked();
    let rounds = knob("TETHER_BENCH_ROUNDS", 3);
    let secs = knob("TETHER_BENCH_SECS", 5);
    println!(
        "tether proxy bench: {}; {rounds} rounds of {secs} s, {CONNECTIONS} connections",
        machine()
    );

    let pin = Pinning::detect();
    let dir = workdir();
    let (up, up_addr, up_name) = start_upstream(&pin, dir.path());
    println!("upstream: {up_name} at {up_addr}");
    let direct = Target {
        name: "direct to the upstream",
        addr: up_addr,
        proc: up,
        bearer: false,
        config: None,
    };
    let pass = start_passthrough(&pin, dir.path(), up_addr, None).unwrap_or_else(|e| panic!("{e}"));
    // `config`: the HS256 tether's, whose tokens the pass-through gets.
    let (tether, config) =
        start_tether(&pin, dir.path(), up_addr).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var("TETHER_BENCH_ONLY").as_deref() == Ok("idempotency") {
        let idempotency =
            idempotency_rows(&pin, dir.path(), up_addr, &tether, &config, rounds, secs);
        let json = serde_json::json!({
            "bench": "proxy (idempotency rows only)",
            "machine": machine(),
            "upstream": up_name,
            "seconds": secs,
            "connections": CONNECTIONS,
            "idempotency": idempotency,
        });
        write_report("bench-proxy-idempotency.json", &json);
        return;
    }
    let start = |keys| {
        start_tether_with(&pin, dir.path(), up_addr, keys)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    };
    let (eddsa_cached, eddsa_uncached) = (start(Keys::EdDsaCached), start(Keys::EdDsaUncached));
    let hs256_uncached = start(Keys::Hs256Uncached);

    // Before/after: `TETHER_BENCH_COMPARE=/path/to/old/tether` adds other
    // builds as extra rows, interleaved with the rest.
    let mut others = Vec::new();
    for path in std::env::var("TETHER_BENCH_COMPARE")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let name: &'static str = Box::leak(format!("tether build {path}").into_boxed_str());
        let (t, _) = start_tether_binary(
            &pin,
            dir.path(),
            up_addr,
            Path::new(path),
            Keys::Hs256,
            name,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        others.push(t);
    }

    let direct_run = measured_closed(&pin, &direct, None, secs);
    println!("  {:<30} {:>9.0} req/s", direct.name, direct_run.load.rps);
    // Indexes 0-4 are fixed (the ratios and the JSON name them); the
    // compared builds follow.
    let mut targets = vec![
        &pass,
        &tether,
        &eddsa_cached,
        &eddsa_uncached,
        &hs256_uncached,
    ];
    targets.extend(others.iter());
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (i, t) in targets.iter().enumerate() {
            let token = t.token(&config);
            let run = measured_closed(&pin, t, Some(&token), secs);
            println!(
                "  round {round}: {:<30} {:>9.0} req/s  p50 {:>8}  p99 {:>8}  {:.1} µs CPU/req{}",
                t.name,
                run.load.rps,
                fmt_us(run.load.p50_us),
                fmt_us(run.load.p99_us),
                run.cpu_us_per_req,
                errors_note(&run.load)
            );
            runs[i].push(run);
        }
    }

    let med = |i: usize, f: &dyn Fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    let rps = |i| med(i, &|r| r.load.rps);
    let cpu = |i| med(i, &|r| r.cpu_us_per_req);
    let ratio = rps(1) / rps(0);
    let cpu_ratio = cpu(1) / cpu(0);
    let eddsa_ratio = rps(2) / rps(1);
    let eddsa_cpu_ratio = cpu(2) / cpu(1);
    let eddsa_uncached_ratio = rps(3) / rps(1);
    let hs256_uncached_ratio = rps(4) / rps(1);
    let hs256_uncached_cpu = cpu(4) / cpu(1);

    // Allocations per proxied request, each in its own counted process
    // (the measured ones above stay up, idle).
    let pass_file = dir.path().join("pass.allocs");
    let counted_pass = start_passthrough(&pin, dir.path(), up_addr, Some(&pass_file))
        .unwrap_or_else(|e| panic!("{e}"));
    let (pass_allocs, _) = allocs_per_request(&pin, &counted_pass, None, &pass_file);
    drop(counted_pass);
    // The same with tether's upstream timeouts: what those limits cost in
    // Pingora itself (issue 17's allocation tier is judged against both).
    let timed_file = dir.path().join("pass-timeouts.allocs");
    let counted_timed =
        start_passthrough_with_timeouts(&pin, dir.path(), up_addr, Some(&timed_file))
            .unwrap_or_else(|e| panic!("{e}"));
    let (pass_timed_allocs, _) = allocs_per_request(&pin, &counted_timed, None, &timed_file);
    drop(counted_timed);
    let mut allocs = vec![pass_allocs];
    for keys in [
        Keys::Hs256,
        Keys::EdDsaCached,
        Keys::EdDsaUncached,
        Keys::Hs256Uncached,
    ] {
        let file = dir.path().join(format!("tether-{keys:?}.allocs"));
        let counted = start_tether_counted(&pin, dir.path(), up_addr, &file, keys);
        let token = counted.token(&config);
        allocs.push(allocs_per_request(&pin, &counted, Some(&token), &file).0);
    }
    let tether_allocs = allocs[1];

    println!();
    println!("| path | req/s | p50 | p99 | CPU µs/req | allocs/req | ÷ plain Pingora |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {} | {} | {:.1} | - | - |",
        direct.name,
        direct_run.load.rps,
        fmt_us(direct_run.load.p50_us),
        fmt_us(direct_run.load.p99_us),
        direct_run.cpu_us_per_req
    );
    for (i, t) in targets.iter().enumerate() {
        let allocs = allocs.get(i).map_or("-".to_owned(), |a| format!("{a:.1}"));
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {} | {:.3} |",
            t.name,
            rps(i),
            fmt_us(med(i, &|r| r.load.p50_us)),
            fmt_us(med(i, &|r| r.load.p99_us)),
            med(i, &|r| r.cpu_us_per_req),
            allocs,
            rps(i) / rps(0)
        );
    }
    println!();
    println!(
        "tether ÷ plain Pingora: throughput {ratio:.3} (target >= 0.95: {}), CPU per request {cpu_ratio:.3} (target <= 1.10: {})",
        if ratio >= 0.95 { "met" } else { "MISSED" },
        if cpu_ratio <= 1.10 { "met" } else { "MISSED" }
    );
    println!(
        "EdDSA ÷ HS256: with the cache {eddsa_ratio:.3} (target >= 0.95: {}), CPU per request {eddsa_cpu_ratio:.3}; without the cache {eddsa_uncached_ratio:.3}",
        if eddsa_ratio >= 0.95 { "met" } else { "MISSED" }
    );
    println!(
        "HS256 with the verified-token cache off ÷ on: throughput {hs256_uncached_ratio:.3}, CPU per request {hs256_uncached_cpu:.3}"
    );
    println!(
        "allocations per proxied request: plain Pingora {pass_allocs:.1}, tether {tether_allocs:.1} (tether's own: {:.1}); EdDSA cached {:.1}, uncached {:.1}; HS256 cache off {:.1}",
        tether_allocs - pass_allocs,
        allocs[2],
        allocs[3],
        allocs[4]
    );
    let met = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "allocations per request <= plain Pingora's (issue 17): {} against the bare pass-through ({tether_allocs:.1} vs {pass_allocs:.1}); {} against it with tether's upstream timeouts ({pass_timed_allocs:.1})",
        met(tether_allocs <= pass_allocs),
        met(tether_allocs <= pass_timed_allocs)
    );

    let idempotency = idempotency_rows(&pin, dir.path(), up_addr, &tether, &config, rounds, secs);

    let json = serde_json::json!({
        "bench": "proxy",
        "machine": machine(),
        "upstream": up_name,
        "rounds": rounds,
        "seconds": secs,
        "connections": CONNECTIONS,
        "direct": direct_run,
        "plain_pingora": { "runs": runs[0], "median_rps": rps(0), "allocs_per_request": pass_allocs },
        "plain_pingora_upstream_timeouts": { "allocs_per_request": pass_timed_allocs },
        "tether_hs256": { "runs": runs[1], "median_rps": rps(1), "allocs_per_request": tether_allocs },
        "tether_eddsa_cached": { "runs": runs[2], "median_rps": rps(2), "allocs_per_request": allocs[2] },
        "tether_eddsa_uncached": { "runs": runs[3], "median_rps": rps(3), "allocs_per_request": allocs[3] },
        "tether_hs256_cache_off": { "runs": runs[4], "median_rps": rps(4), "allocs_per_request": allocs[4] },
        "compared": (5..targets.len())
            .map(|i| serde_json::json!({ "name": targets[i].name, "runs": runs[i], "median_rps": rps(i) }))
            .collect::<Vec<_>>(),
        "ratio_tether_over_pingora": ratio,
        "cpu_ratio_tether_over_pingora": cpu_ratio,
        "ratio_eddsa_cached_over_hs256": eddsa_ratio,
        "cpu_ratio_eddsa_cached_over_hs256": eddsa_cpu_ratio,
        "ratio_eddsa_uncached_over_hs256": eddsa_uncached_ratio,
        "ratio_hs256_cache_off_over_on": hs256_uncached_ratio,
        "idempotency": idempotency,
    });
    write_report("bench-proxy.json", &json);
}

/// The `Idempotency-Key` rows. The baseline is a tether with
/// `[idempotency] enabled = false` (the feature is on by default, so the
/// plain HS256 tether above would not be "without idempotency"): POSTs
/// without a key, and POSTs carrying the same fresh key per request as the
/// keyed rows (the same bytes on the wire: what is left is the
/// idempotency work alone). Then POST without a key and with a fresh key
/// per request through a tether with the memory store, and POST with a key
/// through a tether with the Redis store (a private `redis-server`, when
/// installed). Interleaved rounds, medians; the ratios are over "POST, no
/// idempotency". Then allocations per POST (counted in-process).
fn idempotency_rows(
    pin: &Pinning,
    dir: &Path,
    up_addr: std::net::SocketAddr,
    _plain: &Target,
    config: &Path,
    rounds: u64,
    secs: u64,
) -> serde_json::Value {
    // More rounds than the GET rows: the target (5%) is smaller than one
    // round's noise on a shared machine.
    let rounds = knob("TETHER_BENCH_IDEMPOTENCY_ROUNDS", rounds.max(5));
    const OFF: &str = "enabled = false";
    const MEMORY: &str = "enabled = true\nstore = { kind = \"memory\" }";
    let off = start_tether_idempotent(pin, dir, up_addr, OFF, "tether, idempotency off")
        .unwrap_or_else(|e| panic!("{e}"));
    let memory = start_tether_idempotent(
        pin,
        dir,
        up_addr,
        MEMORY,
        "tether, idempotency on (memory store)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let redis = tether_testkit::redis::available().then(tether_testkit::Redis::start);
    let redis_target = redis.as_ref().map(|r| {
        start_tether_idempotent(
            pin,
            dir,
            up_addr,
            &format!(
                "enabled = true\nstore = {{ kind = \"redis\", url = \"{}\" }}",
                r.url()
            ),
            "tether, idempotency on (Redis store)",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    });
    if redis.is_none() {
        println!("note: /usr/bin/redis-server not found: no Redis row (scripts/install-deps.sh installs it)");
    }
    // (row name, target, keyed)
    let mut rows: Vec<(&str, &Target, bool)> = vec![
        ("POST, no idempotency", &off, false),
        ("POST + key header, idempotency off", &off, true),
        ("POST, no key, memory store on", &memory, false),
        ("POST + key, memory store", &memory, true),
    ];
    if let Some(t) = &redis_target {
        rows.push(("POST + key, Redis store", t, true));
    }
    // Fill the stores first: a memory store at its bound evicts on every
    // new answer, which is its steady state in production; measured from
    // empty, the first rounds would time the store growing instead.
    // 10% past the memory store's default bound (Redis has none: the same
    // count, so both rows run after the same history).
    let fill_to = tether_proxy::idempotency::config::DEFAULT_MAX_ENTRIES as u64 * 11 / 10;
    for (name, t, keyed) in &rows {
        if !*keyed || std::ptr::eq(*t, &off) {
            continue;
        }
        let token = t.token(config);
        let mut sent = 0;
        while sent < fill_to {
            let l = closed_loop_post(pin, t, Some(&token), secs, true, || ());
            if l.requests == 0 {
                panic!(
                    "{name}: no answer while filling the store{}",
                    errors_note(&l)
                );
            }
            sent += l.requests;
        }
        println!("filled: {name}: {sent} keyed requests before measuring (at least {fill_to})");
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); rows.len()];
    // Per round, each row's requests/s over the baseline's of the same
    // round: the machine's drift between rounds cancels out.
    let mut paired: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    println!();
    for round in 1..=rounds {
        // Rows in a rotated order each round, so none is always first.
        let mut this_round = vec![None; rows.len()];
        for k in 0..rows.len() {
            let i = (k + round as usize - 1) % rows.len();
            let (name, t, keyed) = &rows[i];
            let token = t.token(config);
            let run = measured_post(pin, t, Some(&token), secs, *keyed);
            println!(
                "  round {round}: {name:<36} {:>9.0} req/s  p50 {:>8}  p99 {:>8}  {:.1} µs CPU/req ({:.1} kernel)  {:.1} faults/1k{}",
                run.load.rps,
                fmt_us(run.load.p50_us),
                fmt_us(run.load.p99_us),
                run.cpu_us_per_req,
                run.sys_us_per_req,
                run.faults_per_kreq,
                errors_note(&run.load)
            );
            this_round[i] = Some(run.load.rps);
            runs[i].push(run);
        }
        let base = this_round[0].unwrap_or(f64::NAN);
        for (i, r) in this_round.iter().enumerate() {
            paired[i].push(r.unwrap_or(f64::NAN) / base);
        }
    }
    // Allocations per POST, each in its own counted process.
    let mut allocs = Vec::new();
    for (i, (name, idem, keyed)) in [
        ("off", OFF, false),
        ("off-key", OFF, true),
        ("memory", MEMORY, false),
        ("memory-key", MEMORY, true),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.join(format!("tether-idem-{name}.allocs"));
        let counted = start_tether_counted_idempotent(pin, dir, up_addr, &file, idem, rows[i].0);
        let token = counted.token(config);
        let post = Some(post_spec(keyed));
        allocs.push(allocs_per_request_with(pin, &counted, Some(&token), &file, post).0);
    }
    let med = |i: usize, f: &dyn Fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    let rps = |i| med(i, &|r| r.load.rps);
    println!();
    println!(
        "| POST path | req/s | p50 | p99 | CPU µs/req | of it kernel | page faults / 1k req | allocs/req | ÷ POST, no idempotency | same round ÷ POST, no idempotency (median) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let a = allocs.get(i).map_or("-".to_owned(), |a| format!("{a:.1}"));
        println!(
            "| {name} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {a} | {:.3} | {:.3} |",
            rps(i),
            fmt_us(med(i, &|r| r.load.p50_us)),
            fmt_us(med(i, &|r| r.load.p99_us)),
            med(i, &|r| r.cpu_us_per_req),
            med(i, &|r| r.sys_us_per_req),
            med(i, &|r| r.faults_per_kreq),
            rps(i) / rps(0),
            median(paired[i].clone())
        );
    }
    let memory_ratio = rps(3) / rps(0);
    let same_bytes_ratio = rps(3) / rps(1);
    let memory_paired = median(paired[3].clone());
    let cpu = |i| med(i, &|r| r.cpu_us_per_req);
    let memory_cpu_ratio = cpu(0) / cpu(3);
    println!(
        "POST + key, memory store, per round ÷ POST, no idempotency: {}",
        paired[3]
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "POST + key, memory store ÷ POST, no idempotency, rows one after another: medians {memory_ratio:.3}, same-round median {memory_paired:.3}, CPU per request {memory_cpu_ratio:.3}; ÷ the same keyed POST with idempotency off: {same_bytes_ratio:.3}"
    );
    let side = side_by_side_rows(pin, config, &off, &memory, rounds, secs);
    let target = side
        .get("memory_keyed_vs_plain_post")
        .and_then(|v| v.as_f64())
        .unwrap_or(f64::NAN);
    println!(
        "target: POST + key, memory store, side by side with POST, no idempotency: cost ratio {target:.3} (>= 0.95: {})",
        if target >= 0.95 { "met" } else { "MISSED" }
    );
    let redis_ratio = (rows.len() > 4).then(|| rps(4) / rps(0));
    if let Some(r) = redis_ratio {
        println!(
            "POST + key, Redis store ÷ POST, no idempotency: {r:.3}; ÷ the same keyed POST with idempotency off: {:.3}",
            rps(4) / rps(1)
        );
    }
    serde_json::json!({
        "rows": rows
            .iter()
            .enumerate()
            .map(|(i, (name, _, keyed))| serde_json::json!({
                "name": name, "keyed": keyed, "runs": runs[i], "median_rps": rps(i),
                "allocs_per_request": allocs.get(i),
            }))
            .collect::<Vec<_>>(),
        "ratio_memory_keyed_over_plain_post": memory_ratio,
        "paired_ratios_over_plain_post": paired,
        "ratio_memory_keyed_over_plain_post_same_round_median": memory_paired,
        "cpu_ratio_plain_post_over_memory_keyed": memory_cpu_ratio,
        "filled_before_measuring": fill_to,
        "ratio_memory_keyed_over_keyed_post_off": same_bytes_ratio,
        "ratio_redis_keyed_over_plain_post": redis_ratio,
        "side_by_side": side,
    })
}

/// The target's measure: two targets loaded at once on the proxy core
/// (`side_by_side_post`), so the machine's drift, which moves rows run one
/// after another by 10-15% here, moves both alike. Pairs (two processes
/// each): the control (unkeyed POSTs to the memory-store tether; should
/// be 1), and the memory store on keyed POSTs against the plain POST (the
/// target) and against the same keyed POST with idempotency off. Per pair, the median over rounds of A's CPU per request ÷ B's:
/// B's requests/s at equal CPU, as a share of A's.
fn side_by_side_rows(
    pin: &Pinning,
    config: &Path,
    off: &Target,
    memory: &Target,
    rounds: u64,
    secs: u64,
) -> serde_json::Value {
    let (t_off, t_mem) = (off.token(config), memory.token(config));
    let pairs: [(&str, &str, Side, Side); 3] = [
        (
            "control: unkeyed, store on",
            "control",
            (off, &t_off, false),
            (memory, &t_mem, false),
        ),
        (
            "POST + key, memory store",
            "memory_keyed_vs_plain_post",
            (off, &t_off, false),
            (memory, &t_mem, true),
        ),
        (
            "POST + key, memory store ÷ the same keyed POST, off",
            "memory_keyed_vs_keyed_off",
            (off, &t_off, true),
            (memory, &t_mem, true),
        ),
    ];
    println!();
    println!("Side by side (both on the proxy core at once, {} connections each, {secs} s, {rounds} rounds): B's cost ÷ A's, as requests/s at equal CPU", CONNECTIONS / 2);
    let mut out = serde_json::Map::new();
    for (name, key, a, b) in pairs {
        let mut ratios = Vec::new();
        let mut rps_ratios = Vec::new();
        for _ in 0..rounds {
            let [(la, ca), (lb, cb)] = side_by_side_post(pin, a, b, secs);
            if la.errors > 0 || lb.errors > 0 {
                println!(
                    "  {name}: {} / {} errors: round left out",
                    la.errors, lb.errors
                );
                continue;
            }
            ratios.push(ca / cb);
            rps_ratios.push(lb.rps / la.rps);
        }
        let m = median(ratios.clone());
        println!(
            "  {name:<52} {m:.3}  (rounds {}; requests/s B ÷ A {:.3})",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(rps_ratios.clone())
        );
        out.insert(key.to_owned(), serde_json::json!(m));
        out.insert(format!("{key}_rounds"), serde_json::json!(ratios));
        out.insert(format!("{key}_rps_rounds"), serde_json::json!(rps_ratios));
    }
    serde_json::Value::Object(out)
}

fn errors_note(l: &LoadResult) -> String {
    if l.errors > 0 {
        format!("  ({} ERRORS: not comparable)", l.errors)
    } else {
        String::new()
    }
}
