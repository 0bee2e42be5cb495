//! The real edge (issue 17), `cargo bench --bench edge`: TLS terminated
//! by the proxy, HTTP/1.1 and HTTP/2 downstream, HTTP/1.1 keep-alive
//! upstream.
//!
//! Three proxies, each pinned alone to core 1 with one worker, with the
//! same certificate (ECDSA P-256, `scripts/tls-selfsigned.sh`), in front of
//! the same trivial upstream (nginx `return 200`, or the bench's Rust
//! server) on core 0:
//! - tether (release binary, HS256 key ring, verified-token cache on),
//!   `server.tls_cert_file`/`tls_key_file`, ALPN `h2,http/1.1`;
//! - HAProxy with `bind ... ssl crt ... alpn h2,http/1.1` doing tether's
//!   work (`jwt_verify` on the same HS256 token, `exp`, routing on `srv`:
//!   the config of `benches/peers.rs`);
//! - nginx `proxy_pass` with `listen ... ssl http2` (checks nothing).
//!
//! The loads, on core 0, 32 connections, keep-alive, TLS sessions set up
//! once per connection (not measured: each tool warms up first):
//! - TLS + HTTP/1.1: `wrk -t1 -c32 --latency https://...`;
//! - TLS + HTTP/2, one stream per connection: `h2load -t1 -c32 -m1`;
//! - TLS + HTTP/2, ten streams per connection: `h2load -t1 -c32 -m10`
//!   (how a browser multiplexes; 320 requests in flight).
//!
//! Requests/s, latency (wrk: p50/p99; h2load: mean, it reports no
//! percentiles), CPU µs per request of the proxy (/proc), in interleaved
//! rounds, medians; ratios tether ÷ HAProxy and tether ÷ nginx per load.
//! A peer or tool that is missing is skipped with a message
//! (`scripts/bench-deps.sh` installs them). Knobs `TETHER_BENCH_ROUNDS`
//! (3), `TETHER_BENCH_SECS` (5). JSON: `target/bench-edge.json`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use tether_testkit::conf::Conf;

#[global_allocator]
static GLOBAL: Counting = COUNTING;

/// One way of loading a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    H1,
    H2 { streams: u32 },
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::H1 => "TLS + HTTP/1.1 (wrk)".into(),
            Load::H2 { streams } => format!("TLS + HTTP/2 (h2load -m{streams})"),
        }
    }
}

#[derive(serde::Serialize)]
struct Row {
    load: String,
    proxy: &'static str,
    runs: Vec<Run>,
    rps: f64,
    /// wrk: p50 and p99; h2load: the mean (in `p50_us`), no p99.
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    errors: u64,
}

fn main() {
    run_role_if_asked();
    let rounds = knob("TETHER_BENCH_ROUNDS", 3);
    let secs = knob("TETHER_BENCH_SECS", 5);
    println!(
        "tether edge bench (TLS, HTTP/1.1 and HTTP/2): {}; {rounds} rounds of {secs} s, {CONNECTIONS} connections",
        machine()
    );
    let (Some(wrk), Some(h2load)) = (find_bin("wrk"), find_bin("h2load")) else {
        println!(
            "SKIP: the edge bench needs wrk and h2load (nghttp2-client): scripts/bench-deps.sh"
        );
        return;
    };
    let pin = Pinning::detect();
    let dir = workdir();
    let tls = tls_set(dir.path());
    let (up, up_addr, up_name) = start_upstream(&pin, dir.path());
    println!(
        "upstream: {up_name} at {up_addr}; certificate: ECDSA P-256 (scripts/tls-selfsigned.sh)"
    );
    let _up = up;

    let (tether, config) = start_tether_tls(&pin, dir.path(), up_addr, &tls, &h2load)
        .unwrap_or_else(|e| panic!("{e}"));
    let token = mint(&config);
    let mut targets = vec![tether];
    match start_haproxy_tls(&pin, dir.path(), up_addr, &tls, &token, &h2load) {
        Ok(Some(t)) => targets.push(t),
        Ok(None) => {}
        Err(e) => println!("SKIP HAProxy (TLS): did not start: {e}"),
    }
    match start_nginx_tls(&pin, dir.path(), up_addr, &tls, &h2load) {
        Ok(Some(t)) => targets.push(t),
        Ok(None) => {}
        Err(e) => println!("SKIP nginx (TLS): did not start: {e}"),
    }

    let loads = [Load::H1, Load::H2 { streams: 1 }, Load::H2 { streams: 10 }];
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); targets.len()]; loads.len()];
    for round in 1..=rounds {
        for (li, load) in loads.iter().enumerate() {
            for (ti, t) in targets.iter().enumerate() {
                let token = t.token(&config);
                let run = measured(t, || match load {
                    Load::H1 => wrk_https(&pin, &wrk, t, &token, secs),
                    Load::H2 { streams } => h2load_run(&pin, &h2load, t, &token, *streams, secs),
                });
                println!(
                    "  {round}: {:<30} {:<36} {:>9.0} req/s  {} {:>8}  p99 {:>8}  {:>5.1} µs CPU/req{}",
                    load.name(),
                    t.name,
                    run.load.rps,
                    if *load == Load::H1 { "p50 " } else { "mean" },
                    fmt_us(run.load.p50_us),
                    fmt_us(run.load.p99_us),
                    run.cpu_us_per_req,
                    if run.load.errors > 0 {
                        format!("  ({} ERRORS: not comparable)", run.load.errors)
                    } else {
                        String::new()
                    }
                );
                runs[li][ti].push(run);
            }
        }
    }

    let mut rows = Vec::new();
    for (li, load) in loads.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let r = &runs[li][ti];
            let m = |f: &dyn Fn(&Run) -> f64| median(r.iter().map(f).collect());
            rows.push(Row {
                load: load.name(),
                proxy: t.name,
                rps: m(&|x| x.load.rps),
                p50_us: m(&|x| x.load.p50_us),
                p99_us: m(&|x| x.load.p99_us),
                cpu_us_per_req: m(&|x| x.cpu_us_per_req),
                errors: r.iter().map(|x| x.load.errors).sum(),
                runs: r.clone(),
            });
        }
    }
    drop(targets);

    println!();
    println!("Medians of {rounds} rounds; wrk: p50/p99, h2load: mean latency (no percentiles)");
    println!();
    println!("| load | proxy | req/s | p50 or mean | p99 | CPU µs/req | tether ÷ this |");
    println!("|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let mut summary = Vec::new();
    for load in &loads {
        let name = load.name();
        let of = |prefix: &str| {
            rows.iter()
                .find(|r| r.load == name && r.proxy.starts_with(prefix))
        };
        let tether = of("tether");
        for r in rows.iter().filter(|r| r.load == name) {
            let ratio = match tether {
                Some(t) if !r.proxy.starts_with("tether") => format!("{:.2}", t.rps / r.rps),
                _ => "-".into(),
            };
            println!(
                "| {} | {} | {:.0} | {} | {} | {:.1} | {} |{}",
                r.load,
                r.proxy,
                r.rps,
                fmt_us(r.p50_us),
                fmt_us(r.p99_us),
                r.cpu_us_per_req,
                ratio,
                if r.errors > 0 {
                    format!(" {} errors", r.errors)
                } else {
                    String::new()
                }
            );
        }
        let over = |prefix: &str| Some(tether?.rps / of(prefix)?.rps);
        let (h, n) = (over("HAProxy"), over("nginx"));
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        ratios.push(
            serde_json::json!({"load": name, "tether_over_haproxy": h, "tether_over_nginx": n}),
        );
        summary.push(format!(
            "{name}: tether ÷ HAProxy {}, tether ÷ nginx {}",
            show(h),
            show(n)
        ));
    }
    println!();
    for line in &summary {
        println!("{line}");
    }
    println!();

    let json = serde_json::json!({
        "bench": "edge",
        "machine": machine(),
        "upstream": up_name,
        "certificate": "ECDSA P-256 (scripts/tls-selfsigned.sh)",
        "rounds": rounds,
        "seconds": secs,
        "connections": CONNECTIONS,
        "rows": rows,
        "ratios": ratios,
    });
    write_report("bench-edge.json", &json);
}

/// The certificate every proxy serves.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate chain and key in one file (HAProxy's `crt`).
    combined: PathBuf,
}

fn tls_set(dir: &Path) -> TlsFiles {
    let tls = dir.join("tls");
    let set = tether_testkit::TlsSet::create(&tls);
    let (cert, key) = (set.cert, set.key);
    let combined = tls.join("haproxy.pem");
    let mut both = std::fs::read(&cert).expect("cert");
    both.extend(std::fs::read(&key).expect("key"));
    std::fs::write(&combined, both).expect("combined pem");
    // nginx workers and HAProxy may read as another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&tls, &key, &combined] {
            let mode = if p == &tls { 0o755 } else { 0o644 };
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
    }
    TlsFiles {
        cert,
        key,
        combined,
    }
}

/// Waits until one `GET /` over TLS + HTTP/2 (h2load, one request)
/// answers 2xx.
fn wait_ready_tls(
    proc: &mut Proc,
    port: u16,
    bearer: Option<&str>,
    h2load: &Path,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Some(status) = proc.try_status() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{} exited ({status}):\n{text}", proc.name));
        }
        let mut cmd = Command::new(h2load);
        cmd.args(["-n1", "-c1"]);
        if let Some(t) = bearer {
            cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
        }
        cmd.arg(format!("https://127.0.0.1:{port}/"));
        if let Ok(out) = cmd.output() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let r = parse_h2load(&text);
            if r.requests == 1 && r.errors == 0 {
                return Ok(());
            }
            last = text
                .lines()
                .filter(|l| l.contains("status codes") || l.contains("requests:"))
                .collect::<Vec<_>>()
                .join("; ");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} not ready over TLS within 20 s ({last})",
        proc.name
    ))
}

/// tether (release binary, HS256, cache on) serving TLS with h2.
fn start_tether_tls(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    tls: &TlsFiles,
    h2load: &Path,
) -> Result<(Target, PathBuf), String> {
    let port = free_port();
    let path = write_tether_config_with(dir, port, upstream, Keys::Hs256);
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut c = Conf::parse("bench proxy config", &text)?;
    c.set("server", "public_url", format!("https://127.0.0.1:{port}"))
        .set("server", "tls_cert_file", tls.cert.display().to_string())
        .set("server", "tls_key_file", tls.key.display().to_string());
    let config = c.write(&path).map_err(|e| e.to_string())?;
    let mut cmd = pin.command(PROXY_CORE, Path::new(TETHER));
    cmd.arg("proxy")
        .arg("--config")
        .arg(&config)
        .env("TETHER_LOG", "error");
    let log = dir.join(format!("tether.{port}.log"));
    let mut p = spawn("tether (TLS)", cmd, &log);
    wait_ready_tls(&mut p, port, Some(&mint(&config)), h2load, &log)?;
    Ok((
        Target {
            name: "tether, HS256 token",
            addr: addr(port),
            proc: p,
            bearer: true,
            config: Some(config.clone()),
        },
        config,
    ))
}

/// HAProxy with TLS and ALPN h2, doing tether's work (as in
/// `benches/peers.rs`).
fn start_haproxy_tls(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    tls: &TlsFiles,
    token: &str,
    h2load: &Path,
) -> Result<Option<Target>, String> {
    let Some(haproxy) = find_bin("haproxy") else {
        println!("SKIP HAProxy (TLS): haproxy not installed (scripts/bench-deps.sh)");
        return Ok(None);
    };
    let port = free_port();
    let path = dir.join("haproxy-tls.cfg");
    let conf = haproxy_jwt_config(
        "    ssl-default-bind-options ssl-min-ver TLSv1.2\n",
        &format!(
            "127.0.0.1:{port} ssl crt {} alpn h2,http/1.1",
            tls.combined.display()
        ),
        upstream,
    );
    if !haproxy_accepts(&haproxy, &path, &conf, "HAProxy (TLS)") {
        return Ok(None);
    }
    let mut cmd = pin.command(PROXY_CORE, &haproxy);
    cmd.arg("-db").arg("-f").arg(&path);
    let log = dir.join("haproxy-tls.log");
    let mut p = spawn("haproxy (TLS)", cmd, &log);
    wait_ready_tls(&mut p, port, Some(token), h2load, &log)?;
    Ok(Some(Target {
        name: "HAProxy + jwt_verify + srv routing",
        addr: addr(port),
        proc: p,
        bearer: true,
        config: None,
    }))
}

/// nginx `proxy_pass` with TLS and HTTP/2, upstream keep-alive, one worker.
fn start_nginx_tls(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    tls: &TlsFiles,
    h2load: &Path,
) -> Result<Option<Target>, String> {
    let Some(nginx) = find_bin("nginx") else {
        println!("SKIP nginx (TLS): nginx not installed (scripts/bench-deps.sh)");
        return Ok(None);
    };
    let port = free_port();
    let d = dir.display();
    let (cert, key) = (tls.cert.display(), tls.key.display());
    // `listen ... ssl http2` (nginx 1.22 in Debian 12; `http2 on;` from
    // 1.25.1). Keep-alive without request limits, as the other peers.
    let text = format!(
        r#"worker_processes 1;
daemon off;
pid {d}/nginx-tls.pid;
error_log {d}/nginx-tls.error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tls-body;
    proxy_temp_path {d}/nginx-tls-proxy;
    fastcgi_temp_path {d}/nginx-tls-fastcgi;
    uwsgi_temp_path {d}/nginx-tls-uwsgi;
    scgi_temp_path {d}/nginx-tls-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    upstream up {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}
    server {{
        listen 127.0.0.1:{port} ssl http2 reuseport;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"#
    );
    let conf = dir.join("nginx-tls.conf");
    std::fs::write(&conf, text).expect("write nginx config");
    let mut cmd = pin.command(PROXY_CORE, &nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let log = dir.join("nginx-tls.log");
    let mut p = spawn("nginx (TLS)", cmd, &log);
    wait_ready_tls(&mut p, port, None, h2load, &log)?;
    Ok(Some(Target {
        name: "nginx proxy_pass",
        addr: addr(port),
        proc: p,
        bearer: false,
        config: None,
    }))
}

/// wrk over https (OpenSSL, HTTP/1.1, keep-alive), after a 1 s warm-up.
fn wrk_https(pin: &Pinning, wrk: &Path, t: &Target, token: &str, secs: u64) -> LoadResult {
    let run = |d: u64| {
        let mut cmd = pin.command(LOAD_CORE, wrk);
        cmd.args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{d}s"),
            "--latency",
        ]);
        if t.bearer {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        cmd.arg(format!("https://127.0.0.1:{}/", t.addr.port()));
        let out = cmd.output().expect("run wrk");
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    };
    run(1);
    run(secs)
}

/// h2load over TLS with ALPN h2: `streams` concurrent streams on each of
/// the connections, a 1 s warm-up, then `secs` measured.
fn h2load_run(
    pin: &Pinning,
    h2load: &Path,
    t: &Target,
    token: &str,
    streams: u32,
    secs: u64,
) -> LoadResult {
    let mut cmd = pin.command(LOAD_CORE, h2load);
    cmd.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-m{streams}"),
        &format!("-D{secs}"),
        "--warm-up-time=1",
    ]);
    if t.bearer {
        cmd.arg("-H").arg(format!("authorization: Bearer {token}"));
    }
    cmd.arg(format!("https://127.0.0.1:{}/", t.addr.port()));
    let out = cmd.output().expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let r = parse_h2load(&text);
    if r.requests == 0 {
        println!("h2load gave no result:\n{text}");
    }
    r
}

/// Reads h2load's summary: requests/s, requests done, failures and
/// non-2xx answers, and the mean time per request (in `p50_us`; h2load
/// reports no percentiles).
fn parse_h2load(out: &str) -> LoadResult {
    let mut r = LoadResult {
        tool: "h2load".into(),
        p99_us: f64::NAN,
        p999_us: f64::NAN,
        p50_us: f64::NAN,
        ..LoadResult::default()
    };
    let num = |s: &str| s.trim_end_matches(',').parse::<u64>().unwrap_or(0);
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["finished", "in", secs, rps, "req/s,", ..] => {
                r.seconds = duration_us(secs.trim_end_matches(',')) / 1e6;
                r.rps = rps.parse().unwrap_or(0.0);
            }
            ["requests:", total, "total,", _, "started,", _, "done,", ok, "succeeded,", failed, "failed,", errored, "errored,", timeout, "timeout"] =>
            {
                let _ = ok;
                r.requests = num(total);
                r.errors += num(failed) + num(errored) + num(timeout);
            }
            ["status", "codes:", _, "2xx,", c3, "3xx,", c4, "4xx,", c5, "5xx"] => {
                r.errors += num(c3) + num(c4) + num(c5);
            }
            ["time", "for", "request:", _min, _max, mean, ..] => r.p50_us = duration_us(mean),
            _ => {}
        }
    }
    r
}
