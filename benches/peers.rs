//! Issue 5's peer comparison, `cargo bench --bench peers`.
//!
//! One trivial upstream (nginx `return 200`, one worker, or a tiny Rust
//! server) and, each pinned alone to core 1 with one worker thread and
//! upstream keep-alive: direct to the upstream (the ceiling), a plain
//! Pingora pass-through, tether with an HS256 token locked to itself,
//! nginx `proxy_pass` (checks nothing), and HAProxy doing tether's work
//! (`jwt_verify` on the same HS256 token, `exp` checked, routing on the
//! `srv` claim). A peer whose binary is missing is skipped with a message.
//!
//! Phase 1, closed loop (wrk -t1 -c32 on core 0, keep-alive): throughput,
//! p50/p99, CPU µs per request (utime+stime of the target's processes from
//! /proc), in interleaved rounds. Phase 2, open loop at 50% of each
//! target's own median maximum with coordinated-omission correction (the
//! bench's own paced generator, same 32 connections): p50/p99/p99.9.
//! Peak RSS (VmHWM) at the end. Medians of the rounds, ratios against
//! nginx, HAProxy and plain Pingora. About three minutes; knobs
//! `TETHER_BENCH_ROUNDS` (3), `TETHER_BENCH_SECS` (5, closed),
//! `TETHER_BENCH_OPEN_SECS` (4). JSON: `target/bench-peers.json`.

mod support;

use support::*;

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let pin = Pinning::detect();
    let dir = workdir();
    let (up, up_addr, up_name) = start_upstream(&pin, dir.path());
    println!("upstream: {up_name} at {up_addr}");

    let mut targets = vec![Target {
        name: "direct to the upstream",
        addr: up_addr,
        proc: up,
        bearer: false,
    }];
    let ok = |r: Result<Target, String>| r.unwrap_or_else(|e| panic!("{e}"));
    targets.push(ok(start_passthrough(&pin, dir.path(), up_addr, None)));
    let (tether, config) =
        start_tether(&pin, dir.path(), up_addr).unwrap_or_else(|e| panic!("{e}"));
    targets.push(tether);
    for name in [
        "tether, EdDSA token (cached verification)",
        "tether, EdDSA token (cache disabled)",
    ] {
        println!("SKIP {name}: not yet implemented (EdDSA keys are not supported yet)");
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
            let token = mint(&config);
            let run = measured(t, || closed_loop(&pin, t, Some(&token), secs));
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
            let token = mint(&config);
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
    println!(
        "| tether, EdDSA token (cached / uncached) | not yet implemented | | | | | | | | | | | |"
    );
    println!();

    // The targets, from the medians.
    let get = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    if let (Some(t), Some(p)) = (get("tether"), get("plain Pingora")) {
        let tp = t.rps / p.rps;
        let cpu = t.cpu_us_per_req / p.cpu_us_per_req;
        println!(
            "must: tether >= 0.95x plain Pingora: {tp:.2} -> {}",
            verdict(tp >= 0.95)
        );
        println!(
            "must: CPU/request within 10% of plain Pingora: {cpu:.2} -> {}",
            verdict(cpu <= 1.10)
        );
        if let Some(h) = get("HAProxy") {
            let th = t.rps / h.rps;
            println!(
                "peer: tether >= 1.0x HAProxy+JWT: {th:.2} -> {}",
                verdict(th >= 1.0)
            );
            println!(
                "peer: p99 at 50% load no worse than HAProxy's: {} vs {} -> {}",
                fmt_us(t.open_p99_us),
                fmt_us(h.open_p99_us),
                verdict(t.open_p99_us <= h.open_p99_us)
            );
            println!(
                "moonshot: tether >= 1.1x HAProxy+JWT: {th:.2} -> {}",
                verdict(th >= 1.1)
            );
        }
        if let Some(n) = get("nginx") {
            let tn = t.rps / n.rps;
            println!(
                "moonshot: tether >= 1.1x nginx proxy_pass: {tn:.2} -> {}",
                verdict(tn >= 1.1)
            );
        }
        println!("must: EdDSA with cache >= 0.95x HS256: not yet implemented");
    }

    let json = serde_json::json!({
        "bench": "peers",
        "machine": machine(),
        "upstream": up_name,
        "rounds": rounds,
        "closed_seconds": secs,
        "open_seconds": open_secs,
        "connections": CONNECTIONS,
        "rows": rows,
        "not_yet_implemented": ["tether, EdDSA token (cached verification)", "tether, EdDSA token (cache disabled)"],
    });
    let path = target_dir().join("bench-peers.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("JSON: {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
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
