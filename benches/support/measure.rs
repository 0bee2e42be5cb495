//! Measuring a run: CPU per request, medians, allocations per request, and
//! the knobs and labels of the reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tether_testkit::alloc::read_published_count;

use super::load::run_loadgen;
use super::loadgen::{LoadResult, LoadSpec, PostSpec};
use super::process::Pinning;
use super::targets::Target;
use super::CONNECTIONS;

/// One measured run of one target.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Run {
    pub load: LoadResult,
    /// CPU time of the target per request, microseconds.
    pub cpu_us_per_req: f64,
    /// The kernel's (system) part of it.
    pub sys_us_per_req: f64,
    /// Minor page faults of the target per 1,000 requests.
    pub faults_per_kreq: f64,
}

pub fn measured<F: FnOnce() -> LoadResult>(target: &Target, f: F) -> Run {
    measured_after_warm_up(target, |measuring| {
        measuring();
        f()
    })
}

/// A run whose CPU per request counts only what follows the call of the
/// `measuring` callback `f` is given (the warm-up before it is left out).
pub fn measured_after_warm_up(target: &Target, f: impl FnOnce(&dyn Fn()) -> LoadResult) -> Run {
    let before = std::cell::Cell::new(target.proc.usage());
    let load = f(&|| before.set(target.proc.usage()));
    let (after, before) = (target.proc.usage(), before.get());
    let per_req = |x: f64| {
        if load.requests > 0 {
            x / load.requests as f64
        } else {
            f64::NAN
        }
    };
    let sys = after.system.saturating_sub(before.system);
    let cpu = after.user.saturating_sub(before.user) + sys;
    Run {
        cpu_us_per_req: per_req(cpu.as_secs_f64() * 1e6),
        sys_us_per_req: per_req(sys.as_secs_f64() * 1e6),
        faults_per_kreq: per_req(
            after.minor_faults.saturating_sub(before.minor_faults) as f64 * 1e3,
        ),
        load,
    }
}

/// A closed-loop run of `target` whose CPU per request counts the
/// measured run only (the warm-up before it is left out).
pub fn measured_closed(pin: &Pinning, target: &Target, token: Option<&str>, secs: u64) -> Run {
    measured_after_warm_up(target, |measuring| {
        super::load::closed_loop_after_warm_up(pin, target, token, secs, measuring)
    })
}

/// The same for the POST rows (`load::closed_loop_post`).
pub fn measured_post(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    secs: u64,
    keyed: bool,
) -> Run {
    measured_after_warm_up(target, |measuring| {
        super::load::closed_loop_post(pin, target, token, secs, keyed, measuring)
    })
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Allocations per proxied request of a process started with
/// `TETHER_BENCH_ALLOC_FILE`: a warm-up, an idle window (background work
/// only) and a loaded window; the idle rate is subtracted.
pub fn allocs_per_request(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    file: &Path,
) -> (f64, u64) {
    allocs_per_request_with(pin, target, token, file, None)
}

/// [`allocs_per_request`] for a load of POSTs (`post`) or of `GET /`.
pub fn allocs_per_request_with(
    pin: &Pinning,
    target: &Target,
    token: Option<&str>,
    file: &Path,
    post: Option<PostSpec>,
) -> (f64, u64) {
    let spec = |ms: u64| LoadSpec {
        addr: target.addr,
        bearer: token.filter(|_| target.bearer).map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 0,
        duration_ms: ms,
        rate: None,
        post: post.clone(),
    };
    run_loadgen(pin, &spec(500));
    let settle = Duration::from_millis(50);
    std::thread::sleep(settle);
    let idle0 = read_published_count(file);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let idle = read_published_count(file) - idle0;
    let idle_rate = idle as f64 / t0.elapsed().as_secs_f64();
    let a0 = read_published_count(file);
    let t1 = Instant::now();
    let r = run_loadgen(pin, &spec(2000));
    std::thread::sleep(settle);
    let a1 = read_published_count(file);
    let background = idle_rate * t1.elapsed().as_secs_f64();
    let per = ((a1 - a0) as f64 - background).max(0.0) / r.requests.max(1) as f64;
    (per, r.requests)
}

/// Where JSON results go: the cargo target directory.
/// Writes a bench's JSON report as `target/<file>` and says where (a
/// failure to write is reported, not fatal: the tables were printed).
pub fn write_report(file: &str, json: &serde_json::Value) {
    let path = target_dir().join(file);
    match std::fs::write(&path, serde_json::to_string_pretty(json).expect("json")) {
        Ok(()) => println!("JSON: {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Rounds and seconds per run, from the environment when set.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {cpu}")
}

pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "-".into()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
