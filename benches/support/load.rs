//! Loads: the closed-loop (wrk, else the bench's own generator in
//! `loadgen`) and open-loop runs, and reading wrk's report.

use std::process::Stdio;

use super::loadgen::{LoadResult, LoadSpec, PostSpec};
use super::process::{find_bin, Pinning, LOAD_CORE};
use super::targets::Target;
use super::{CONNECTIONS, ROLE};

/// Closed loop with wrk when installed (the notes' method), else the
/// bench's own generator: a 1 s warm-up, then `secs` measured.
pub fn closed_loop(pin: &Pinning, target: &Target, token: Option<&str>, secs: u64) -> LoadResult {
    closed_loop_after_warm_up(pin, target, token, secs, || {})
}

/// [`closed_loop`], calling `measuring` between the warm-up and the
/// measured run (where CPU counters are read, so that the warm-up's CPU
/// is not divided by the measured run's requests).
pub fn closed_loop_after_warm_up(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    secs: u64,
    measuring: impl FnOnce(),
) -> LoadResult {
    let bearer = token.filter(|_| target.bearer);
    if let Some(wrk) = find_bin("wrk") {
        let run = |d: u64| {
            let mut cmd = pin.command(LOAD_CORE, &wrk);
            cmd.args([
                "-t1",
                &format!("-c{CONNECTIONS}"),
                &format!("-d{d}s"),
                "--latency",
            ]);
            if let Some(t) = bearer {
                cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
            }
            cmd.arg(format!("http://{}/", target.addr));
            let out = cmd.output().expect("run wrk");
            parse_wrk(&String::from_utf8_lossy(&out.stdout))
        };
        run(1); // warm-up
        measuring();
        return run(secs);
    }
    let spec = |warm_up: bool| LoadSpec {
        addr: target.addr,
        bearer: bearer.map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 0,
        duration_ms: if warm_up { 1000 } else { secs * 1000 },
        rate: None,
        post: None,
    };
    run_loadgen(pin, &spec(true));
    measuring();
    run_loadgen(pin, &spec(false))
}

/// Closed loop of `POST /` with a small JSON body, each with a fresh
/// `Idempotency-Key` when `keyed`, always with the bench's own generator
/// (wrk sends one fixed request), so the POST rows compare among
/// themselves. A 1 s warm-up first (its own generator process: keys stay
/// unique, each process names them by its pid), then `measuring()`, then
/// the measured run: CPU read in `measuring` counts the measured run only.
pub fn closed_loop_post(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    secs: u64,
    keyed: bool,
    measuring: impl FnOnce(),
) -> LoadResult {
    let spec = |ms: u64| LoadSpec {
        addr: target.addr,
        bearer: token.filter(|_| target.bearer).map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 0,
        duration_ms: ms,
        rate: None,
        post: Some(post_spec(keyed)),
    };
    run_loadgen(pin, &spec(1000));
    measuring();
    run_loadgen(pin, &spec(secs * 1000))
}

/// The POST rows' request: a 40-byte JSON body, with a fresh
/// `Idempotency-Key` per request when `keyed`.
pub fn post_spec(keyed: bool) -> PostSpec {
    PostSpec {
        body: "{\"userId\":\"alice\",\"sku\":\"bench\",\"qty\":1}".to_owned(),
        keyed,
    }
}

/// Open loop at `rate` requests/s, latency corrected for coordinated
/// omission (see `loadgen`).
pub fn open_loop(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    rate: f64,
    secs: u64,
) -> LoadResult {
    let spec = LoadSpec {
        addr: target.addr,
        bearer: token.filter(|_| target.bearer).map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 1000,
        duration_ms: secs * 1000,
        rate: Some(rate),
        post: None,
    };
    run_loadgen(pin, &spec)
}

pub fn run_loadgen(pin: &Pinning, spec: &LoadSpec) -> LoadResult {
    let mut cmd = pin.command(LOAD_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "loadgen")
        .env(
            "TETHER_BENCH_LOAD",
            serde_json::to_string(spec).expect("json"),
        )
        .stderr(Stdio::inherit());
    let out = cmd.output().expect("run load generator");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("load generator: {e}: {text}"))
}

/// A duration as wrk and h2load print it (`850us`, `1.62ms`, `2.1s`; a
/// bare number is microseconds), in microseconds; NaN when unreadable.
pub fn duration_us(s: &str) -> f64 {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mul
}

pub fn parse_wrk(out: &str) -> LoadResult {
    let mut r = LoadResult {
        tool: "wrk".into(),
        ..LoadResult::default()
    };
    for line in out.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = duration_us(v),
            ["99%", v] => r.p99_us = duration_us(v),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse().unwrap_or(0);
                r.seconds = duration_us(secs.trim_end_matches(',')) / 1e6;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    r.p999_us = f64::NAN;
    r
}

/// One side of [`side_by_side_post`]: the target, its token, and whether
/// each POST carries a fresh `Idempotency-Key`.
pub type Side<'a> = (&'a Target, &'a str, bool);

/// One side-by-side run: `POST /` to two targets at once, half the
/// connections each (a generator process per target, both on the load
/// core), both targets pinned to the proxy core, where the scheduler gives
/// each half of it. Whatever the machine does during the run, it does to
/// both: the ratio of their CPU per request is the ratio of their costs,
/// with far less noise than rows measured one after another (docs/idempotency.md,
/// "Performance"). Returns each target's result and CPU per request (µs).
pub fn side_by_side_post(pin: &Pinning, a: Side, b: Side, secs: u64) -> [(LoadResult, f64); 2] {
    let spec = |(t, token, keyed): Side, ms: u64| LoadSpec {
        addr: t.addr,
        bearer: Some(token.to_owned()).filter(|_| t.bearer),
        connections: CONNECTIONS / 2,
        warmup_ms: 0,
        duration_ms: ms,
        rate: None,
        post: Some(post_spec(keyed)),
    };
    let both = |ms: u64| {
        std::thread::scope(|s| {
            let ha = s.spawn(|| run_loadgen(pin, &spec(a, ms)));
            let hb = s.spawn(|| run_loadgen(pin, &spec(b, ms)));
            [
                ha.join().expect("load generator"),
                hb.join().expect("load generator"),
            ]
        })
    };
    both(1000);
    let before = [a.0.proc.cpu(), b.0.proc.cpu()];
    let [la, lb] = both(secs * 1000);
    let cpu_per_req = |t: &Target, before: std::time::Duration, l: &LoadResult| {
        (t.proc.cpu().saturating_sub(before)).as_secs_f64() * 1e6 / l.requests.max(1) as f64
    };
    let ca = cpu_per_req(a.0, before[0], &la);
    let cb = cpu_per_req(b.0, before[1], &lb);
    [(la, ca), (lb, cb)]
}
