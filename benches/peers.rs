//! Issue 5's peer comparison, `cargo bench --bench peers`.
//!
//! One trivial upstream (nginx `return 200`, one worker, or a tiny Rust
//! server) and, each pinned alone to core 1 with one worker thread and
//! upstream keep-alive: direct to the upstream (the ceiling), a plain
//! Pingora pass-through, tether with an HS256 token locked to itself
//! (verified-token cache on, the default) and the same with the cache off
//! (`verified_cache_entries = 0`: the HMAC checked on every request),
//! tether with an EdDSA (Ed25519) key ring and token, once with the
//! verified-token cache and once without,
//! nginx `proxy_pass` (checks nothing), and HAProxy doing tether's work
//! (`jwt_verify` on the same HS256 token, `exp` checked, routing on the
//! `srv` claim). A peer whose binary is missing is skipped with a message.
//! Each tether gets a fresh token from its own key ring before each run;
//! the other targets get the HS256 one.
//!
//! Phase 1, closed loop (wrk -t1 -c32 on core 0, keep-alive): throughput,
//! p50/p99, CPU µs per request (utime+stime of the target's processes from
//! /proc), in interleaved rounds. Phase 2, open loop at 50% of each
//! target's own median maximum with coordinated-omission correction (the
//! bench's own paced generator, same 32 connections): p50/p99/p99.9.
//! Peak RSS (VmHWM) at the end. Medians of the rounds, ratios against
//! nginx, HAProxy and plain Pingora, and EdDSA ÷ HS256 (the median and
//! each round's). About five minutes; knobs
//! `TETHER_BENCH_ROUNDS` (3), `TETHER_BENCH_SECS` (5, closed),
//! `TETHER_BENCH_OPEN_SECS` (4). JSON: `target/bench-peers.json`.

mod support;

use support::*;

#[global_allocator]
static GLOBAL: Counting = COUNTING;

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    closed: Vec<Run>,
    open: Vec<Run>,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    open_rate: f64,
    open_p50_us: f64,
    open_p99_us: f64,
    open_p999_us: f64,
    peak_rss_bytes: u64,
    errors: u64,
}

fn main() {
    run_role_if_asked();
    let rounds = knob("TETHER_BENCH_ROUNDS", 3);
    let secs = knob("TETHER_BENCH_SECS", 5);
    let open_secs = knob("TETHER_BENCH_OPEN_SECS", 4);
    println!(
        "tether peer bench: {}; {rounds} rounds, closed {secs} s, open {open_secs} s, {CONNECTIONS} connections",
        machine()
    );
    let load_before = load_average();
    println!("load average before: {load_before:.2} (quiet below 1.5)");
    let pin = Pinning::detect();
    let dir = workdir();
    let (up, up_addr, up_name) = start_upstream(&pin, dir.path());
    println!("upstream: {up_name} at {up_addr}");

    let mut targets = vec![Target {
        name: "direct to the upstream",
        addr: up_addr,
        proc: up,
        bearer: false,
        config: None,
    }];
    let ok = |r: Result<Target, String>| r.unwrap_or_else(|e| panic!("{e}"));
    targets.push(ok(start_passthrough(&pin, dir.path(), up_addr, None)));
    // `config`: the HS256 tether's, whose tokens the non-tether targets get.
    let (tether, config) =
        start_tether(&pin, dir.path(), up_addr).unwrap_or_else(|e| panic!("{e}"));
    targets.push(tether);
    for keys in [Keys::Hs256Uncached, Keys::EdDsaCached, Keys::EdDsaUncached] {
        let (t, _) =
            start_tether_with(&pin, dir.path(), up_addr, keys).unwrap_or_else(|e| panic!("{e}"));
        targets.push(t);
    }
    match start_nginx_proxy(&pin, dir.path(), up_addr) {
        Ok(Some(t)) => targets.push(t),
        Ok(None) => {}
        Err(e) => println!("SKIP nginx proxy_pass: did not start: {e}"),
    }
    match start_haproxy(&pin, dir.path(), up_addr, &mint(&config)) {
        Ok(Some(t)) => targets.push(t),
        Ok(None) => {}
        Err(e) => println!("SKIP HAProxy: did not start: {e}"),
    }

    // Phase 1: closed loop, interleaved rounds.
    let mut closed: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (i, t) in targets.iter().enumerate() {
            let token = t.token(&config);
            let run = measured_closed(&pin, t, Some(&token), secs);
            println!(
                "  closed {round}: {:<36} {:>9.0} req/s  p50 {:>8}  p99 {:>8}  {:>5.1} µs CPU/req{}",
                t.name,
                run.load.rps,
                fmt_us(run.load.p50_us),
                fmt_us(run.load.p99_us),
                run.cpu_us_per_req,
                errors_note(&run.load)
            );
            closed[i].push(run);
        }
    }
    let max_rps: Vec<f64> = closed
        .iter()
        .map(|runs| median(runs.iter().map(|r| r.load.rps).collect()))
        .collect();

    // Phase 2: open loop at half of each one's own maximum.
    let mut open: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        for (i, t) in targets.iter().enumerate() {
            let token = t.token(&config);
            let rate = max_rps[i] * 0.5;
            let run = measured(t, || open_loop(&pin, t, Some(&token), rate, open_secs));
            println!(
                "  open {round}: {:<36} {:>7.0}/{:<7.0} req/s  p50 {:>8}  p99 {:>8}  p99.9 {:>8}{}",
                t.name,
                run.load.rps,
                rate,
                fmt_us(run.load.p50_us),
                fmt_us(run.load.p99_us),
                fmt_us(run.load.p999_us),
                errors_note(&run.load)
            );
            open[i].push(run);
        }
    }

    let rows: Vec<Row> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let c = |f: &dyn Fn(&Run) -> f64| median(closed[i].iter().map(f).collect());
            let o = |f: &dyn Fn(&Run) -> f64| median(open[i].iter().map(f).collect());
            Row {
                name: t.name,
                rps: max_rps[i],
                p50_us: c(&|r| r.load.p50_us),
                p99_us: c(&|r| r.load.p99_us),
                cpu_us_per_req: c(&|r| r.cpu_us_per_req),
                open_rate: o(&|r| r.load.rps),
                open_p50_us: o(&|r| r.load.p50_us),
                open_p99_us: o(&|r| r.load.p99_us),
                open_p999_us: o(&|r| r.load.p999_us),
                peak_rss_bytes: t.proc.peak_rss(),
                errors: closed[i]
                    .iter()
                    .chain(&open[i])
                    .map(|r| r.load.errors)
                    .sum(),
                closed: closed[i].clone(),
                open: open[i].clone(),
            }
        })
        .collect();
    drop(targets);

    let find = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.rps)
    };
    let (nginx, haproxy, pingora) = (find("nginx"), find("HAProxy"), find("plain Pingora"));
    let ratio =
        |v: f64, base: Option<f64>| base.map_or("-".to_owned(), |b| format!("{:.2}", v / b));

    println!();
    println!("Closed loop (max throughput, wrk -t1 -c{CONNECTIONS}), open loop at 50% of each one's max (CO-corrected); medians of {rounds} rounds");
    println!();
    println!("| path | req/s | p50 | p99 | CPU µs/req | peak RSS | open-loop req/s | p50 | p99 | p99.9 | ÷ nginx | ÷ HAProxy | ÷ Pingora |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {} | {} | {:.1} | {:.1} MiB | {:.0} | {} | {} | {} | {} | {} | {} |{}",
            r.name,
            r.rps,
            fmt_us(r.p50_us),
            fmt_us(r.p99_us),
            r.cpu_us_per_req,
            r.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            r.open_rate,
            fmt_us(r.open_p50_us),
            fmt_us(r.open_p99_us),
            fmt_us(r.open_p999_us),
            ratio(r.rps, nginx),
            ratio(r.rps, haproxy),
            ratio(r.rps, pingora),
            if r.errors > 0 {
                format!(" {} errors", r.errors)
            } else {
                String::new()
            }
        );
    }
    println!();

    // Whether these figures can be compared with the independent harness
    // (scripts/bench-independent.sh): the same tools, a load core with
    // headroom, a quiet machine.
    let load_after = load_average();
    let comparable = method_check(&rows, up_name, load_before.max(load_after));

    // The targets, from the medians.
    let get = |name: &str| rows.iter().find(|r| r.name == name);
    let hs256 = get(Keys::Hs256.row());
    let mut tether_over_pingora = None;
    if let (Some(t), Some(p)) = (hs256, get("plain Pingora pass-through")) {
        let tp = t.rps / p.rps;
        tether_over_pingora = Some(tp);
        let cpu = t.cpu_us_per_req / p.cpu_us_per_req;
        println!(
            "must: tether >= 0.95x plain Pingora: {tp:.2} -> {}",
            verdict(tp >= 0.95)
        );
        println!(
            "must: CPU/request within 10% of plain Pingora: {cpu:.2} -> {}",
            verdict(cpu <= 1.10)
        );
        if let Some(h) = get("HAProxy + jwt_verify + srv routing") {
            let th = t.rps / h.rps;
            let r = Ratio::of(t, h);
            println!(
                "peer: tether >= 1.0x HAProxy+JWT: {th:.2} (rounds {}; CPU/request {:.2}x) -> {}{}",
                r.rounds(),
                r.cpu_per_request,
                verdict(th >= 1.0),
                if comparable {
                    ""
                } else {
                    " (NOT COMPARABLE, see above)"
                }
            );
            // One disturbance of the machine inside a round decides that
            // round's p99: show every round, and where the tier is judged.
            let rounds_p99 = |r: &Row| {
                r.open
                    .iter()
                    .map(|o| fmt_us(o.load.p99_us))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "peer: p99 at 50% load no worse than HAProxy's: {} vs {} -> {} (rounds: tether {}; HAProxy {}; with this few rounds the verdict follows the machine's stalls: `OPEN_ROUNDS=9 scripts/bench-independent.sh` judges it, docs/benchmarks.md)",
                fmt_us(t.open_p99_us),
                fmt_us(h.open_p99_us),
                verdict(t.open_p99_us <= h.open_p99_us),
                rounds_p99(t),
                rounds_p99(h)
            );
            println!(
                "moonshot: tether >= 1.1x HAProxy+JWT: {th:.2} -> {}",
                verdict(th >= 1.1)
            );
        }
        if let Some(n) = get("nginx proxy_pass") {
            let tn = t.rps / n.rps;
            println!(
                "moonshot: tether >= 1.1x nginx proxy_pass: {tn:.2} -> {}",
                verdict(tn >= 1.1)
            );
        }
    }
    // EdDSA ÷ HS256, closed loop: the medians' ratio, and each round's own
    // (the rounds are interleaved, so a round's pair ran under about the
    // same machine load).
    let over_hs256 = |keys: Keys| Some(Ratio::of(get(keys.row())?, hs256?));
    let cached = over_hs256(Keys::EdDsaCached);
    let uncached = over_hs256(Keys::EdDsaUncached);
    let hs256_cache_off = over_hs256(Keys::Hs256Uncached);
    if let Some(r) = &cached {
        println!(
            "must: EdDSA with cache >= 0.95x HS256: {:.2} (rounds {}; CPU/request {:.2}x) -> {}",
            r.rps,
            r.rounds(),
            r.cpu_per_request,
            verdict(r.rps >= 0.95)
        );
    }
    if let Some(r) = &uncached {
        println!(
            "info: EdDSA without cache ÷ HS256: {:.2} (rounds {}; CPU/request {:.2}x)",
            r.rps,
            r.rounds(),
            r.cpu_per_request
        );
    }
    if let Some(r) = &hs256_cache_off {
        println!(
            "info: HS256 with the verified-token cache off ÷ on: {:.2} (rounds {}; CPU/request {:.2}x)",
            r.rps,
            r.rounds(),
            r.cpu_per_request
        );
    }

    let json = serde_json::json!({
        "bench": "peers",
        "machine": machine(),
        "upstream": up_name,
        "rounds": rounds,
        "load_average": [load_before, load_after],
        "comparable_with_independent": comparable,
        "closed_seconds": secs,
        "open_seconds": open_secs,
        "connections": CONNECTIONS,
        "rows": rows,
        "ratios": {
            "tether_hs256_over_pingora": tether_over_pingora,
            "eddsa_cached_over_hs256": cached,
            "eddsa_uncached_over_hs256": uncached,
            "hs256_cache_off_over_on": hs256_cache_off,
        },
    });
    write_report("bench-peers.json", &json);
}

/// One tether row against another, closed loop.
#[derive(serde::Serialize)]
struct Ratio {
    /// Median requests/s ÷ median requests/s.
    rps: f64,
    /// Median CPU per request ÷ median CPU per request.
    cpu_per_request: f64,
    /// Requests/s ÷ requests/s of the same round.
    per_round: Vec<f64>,
}

impl Ratio {
    fn of(a: &Row, b: &Row) -> Ratio {
        Ratio {
            rps: a.rps / b.rps,
            cpu_per_request: a.cpu_us_per_req / b.cpu_us_per_req,
            per_round: a
                .closed
                .iter()
                .zip(&b.closed)
                .map(|(x, y)| x.load.rps / y.load.rps)
                .collect(),
        }
    }

    fn rounds(&self) -> String {
        let r: Vec<String> = self.per_round.iter().map(|x| format!("{x:.2}")).collect();
        r.join(", ")
    }
}

/// The one-minute load average (/proc/loadavg), NaN when unreadable.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Prints why a run is or is not comparable with the independent method
/// (docs/benchmarks.md, "Method"), and returns whether it is: wrk for the
/// closed loop, the nginx upstream, a quiet machine, and a load core
/// (wrk and the upstream share core 0) with headroom. When core 0 is the
/// limit, every target is held near the same ceiling and the ratios
/// between them shrink toward 1: the old tether ÷ HAProxy 1.01 ran with
/// the direct row at 56.7k req/s, so the load core was 75% busy for
/// nginx and about 51% for tether and HAProxy alike.
fn method_check(rows: &[Row], upstream: &str, load: f64) -> bool {
    let mut ok = true;
    let tools: std::collections::BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.closed.iter().map(|c| c.load.tool.as_str()))
        .collect();
    if tools.iter().any(|t| *t != "wrk") {
        println!("method: closed loop by {tools:?}, not wrk (scripts/bench-deps.sh): NOT COMPARABLE with the independent run");
        ok = false;
    }
    if !upstream.starts_with("nginx") {
        println!(
            "method: upstream is {upstream}, not nginx: NOT COMPARABLE with the independent run"
        );
        ok = false;
    }
    if load.is_finite() && load >= 1.5 {
        println!("method: load average {load:.2} (>= 1.5): the machine was not quiet, requests/s are indicative only");
        ok = false;
    }
    if let Some(direct) = rows.iter().find(|r| r.name.starts_with("direct")) {
        for r in rows.iter().filter(|r| !r.name.starts_with("direct")) {
            let busy = r.rps / direct.rps;
            if busy > 0.6 {
                println!(
                    "method: load core about {:.0}% busy for {} ({:.0} of the direct row's {:.0} req/s): its ratio to slower targets is compressed toward 1",
                    busy * 100.0,
                    r.name,
                    r.rps,
                    direct.rps
                );
            }
        }
    }
    if ok {
        println!("method: wrk, nginx upstream, quiet machine: comparable with scripts/bench-independent.sh");
    }
    ok
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

fn errors_note(l: &LoadResult) -> String {
    if l.errors > 0 {
        format!("  ({} ERRORS: not comparable)", l.errors)
    } else {
        String::new()
    }
}
