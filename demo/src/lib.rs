//! `tether demo`: the problem tether exists for, and its cure, in one
//! command.
//!
//! It starts on loopback a discovery node, three regions (a `tether proxy`
//! child process and a sample-app listener each, the apps replicating to
//! each other with a lag), then runs simulated clients doing multi-step
//! workflows while jumping between regions:
//!
//! 1. straight to the apps, routed by (simulated) geo DNS alone;
//! 2. through tether, with the Rust client SDK;
//! 3. through tether while one region's proxy is killed mid-run.
//!
//! It prints one table (or JSON with `--json`) and leaves nothing running.
//! Start reading at [`run`]; [`cluster`] starts the processes, [`geo`]
//! simulates geo DNS, [`load`] runs the clients and defines the counts.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cluster;
pub mod geo;
pub mod live;
pub mod load;
pub mod web;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use load::PhaseReport;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the demo cluster: {0}")]
    Start(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Options(String),
}

/// Demo settings; [`DemoOptions::default`] is what `tether demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `tether` binary to start proxies and discovery with.
    pub tether_bin: PathBuf,
    /// Simulated clients per phase (default 24).
    pub clients: usize,
    /// Length of each phase (default 8 s).
    pub phase: Duration,
    /// Replication lag between regions and its random extra (1.5 s, 0.5 s).
    pub lag: Duration,
    pub jitter: Duration,
    /// Chance that a client's geo-DNS answer changes before a step (0.3).
    pub jump_probability: f64,
    /// Fast failover at the proxies (probe servers clients report
    /// unreachable). Off: a dead server is replaced only after eviction.
    pub fast_failover: bool,
    /// Heartbeat interval and eviction TTL for the demo's discovery.
    pub heartbeat: Duration,
    pub ttl: Duration,
    /// The SDK's "Reconnecting…" wait (default 1 s; the SDK's own default
    /// is 30 s).
    pub reconnect_wait: Duration,
    /// When in phase 3 the proxy dies (fraction of the phase, 0.3).
    pub kill_at: f64,
    /// The region whose proxy is killed (default "us").
    pub kill_region: String,
    pub seed: u64,
    /// Origins the proxies allow in `[cors]` (the live page's, with
    /// `--serve`; none otherwise).
    pub cors_origins: Vec<String>,
    /// `--store etcd`: discovery is two nodes over a three-member etcd
    /// cluster instead of one node in memory.
    pub store_etcd: bool,
    /// `--discovery-outage`: a fourth phase during which every discovery
    /// node is down this long (longer than the access-token lifetime,
    /// which the demo then sets to its minimum, 60 s).
    pub discovery_outage: Option<Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            tether_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tether")),
            clients: 24,
            phase: Duration::from_secs(8),
            lag: Duration::from_millis(1500),
            jitter: Duration::from_millis(500),
            jump_probability: 0.3,
            fast_failover: true,
            heartbeat: Duration::from_millis(500),
            ttl: Duration::from_millis(2000),
            reconnect_wait: Duration::from_secs(1),
            kill_at: 0.3,
            kill_region: "us".into(),
            seed: 7,
            cors_origins: Vec::new(),
            store_etcd: false,
            discovery_outage: None,
        }
    }
}

impl DemoOptions {
    pub fn validate(&self) -> Result<(), DemoError> {
        let bad = |m: String| Err(DemoError::Options(m));
        if !(1..=1000).contains(&self.clients) {
            return bad(format!(
                "--clients {}: must be between 1 and 1000",
                self.clients
            ));
        }
        if self.phase < Duration::from_secs(1) || self.phase > Duration::from_secs(600) {
            return bad(format!(
                "--phase-seconds {:?}: must be between 1 and 600",
                self.phase
            ));
        }
        if !(0.0..=1.0).contains(&self.jump_probability) {
            return bad(format!(
                "--jump {}: must be between 0 and 1",
                self.jump_probability
            ));
        }
        if !cluster::REGIONS.contains(&self.kill_region.as_str()) {
            return bad(format!(
                "--kill-region {:?}: must be one of {:?}",
                self.kill_region,
                cluster::REGIONS
            ));
        }
        if self.ttl < self.heartbeat {
            return bad("--ttl-ms must be at least --heartbeat-ms".into());
        }
        Ok(())
    }
}

/// What the demo measured.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub phases: Vec<PhaseReport>,
    pub clients: usize,
    pub phase_seconds: f64,
    pub replication_lag_ms: u64,
    pub fast_failover: bool,
    pub stale_events_ignored: u64,
    /// `"memory"` or `"etcd"`.
    pub store: String,
    /// Phase 4 (`--discovery-outage`).
    pub outage: Option<OutageReport>,
}

/// What phase 4 showed besides its workflows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutageReport {
    pub outage_seconds: f64,
    /// A refresh during the outage answered 200 `discovery_unavailable`
    /// with the same refresh token back (extend mode).
    pub extended: bool,
    /// After discovery returned: the refresh rotated, a replay of the old
    /// token was refused, and the family was revoked at every proxy.
    pub reuse_caught: bool,
    pub detail: String,
}

/// Runs the three phases and returns the summary. Progress goes to stderr.
pub fn run(opts: &DemoOptions) -> Result<Summary, DemoError> {
    opts.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &DemoOptions) -> Result<Summary, DemoError> {
    let t0 = Instant::now();
    eprintln!("tether demo: starting discovery, 3 proxies and the sample app on 127.0.0.1 …");
    let mut cluster = cluster::Cluster::start(opts).await?;
    eprintln!(
        "  cluster up in {:.1}s: regions {}; replication lag {} ms (+ up to {} ms)",
        t0.elapsed().as_secs_f64(),
        cluster
            .regions
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        opts.lag.as_millis(),
        opts.jitter.as_millis()
    );
    let apps: Vec<String> = cluster.regions.iter().map(|r| r.app_url.clone()).collect();
    let proxies: Vec<String> = cluster
        .regions
        .iter()
        .map(|r| r.proxy_url.clone())
        .collect();

    let total = if opts.discovery_outage.is_some() {
        4
    } else {
        3
    };
    eprintln!("phase 1/{total}: geo routing alone, straight to the apps");
    let p1 = load::direct(opts, apps, "geo routing alone").await;
    eprintln!("phase 2/{total}: through tether");
    let p2 = load::through_tether(opts, proxies.clone(), "through tether", None).await;

    eprintln!(
        "phase 3/{total}: through tether, killing the {} proxy mid-run",
        opts.kill_region
    );
    let victim = cluster
        .regions
        .iter_mut()
        .find(|r| r.code == opts.kill_region)
        .ok_or_else(|| DemoError::Options(format!("no region {}", opts.kill_region)))?;
    let proxy = std::mem::replace(&mut victim.proxy, tether_testkit::Proc::empty());
    let kill = load::Kill {
        at: opts.phase.mul_f64(opts.kill_at),
        server_id: victim.server_id.clone(),
        proxy,
    };
    let p3 = load::through_tether(
        opts,
        proxies.clone(),
        &format!("tether, {} proxy killed", opts.kill_region),
        Some(kill),
    )
    .await;

    let mut phases = vec![p1, p2, p3];
    let mut outage = None;
    if let Some(length) = opts.discovery_outage {
        eprintln!(
            "phase 4/4: through tether, every discovery node down for {} s",
            length.as_secs()
        );
        // Phase 3 killed one proxy; phase 4 runs on the live ones.
        let live: Vec<String> = cluster
            .regions
            .iter()
            .filter(|r| r.code != opts.kill_region)
            .map(|r| r.proxy_url.clone())
            .collect();
        let (p4, report) = outage_phase(opts, &mut cluster, live, length).await?;
        phases.push(p4);
        outage = Some(report);
    }

    let stale = cluster::REGIONS
        .iter()
        .filter_map(|r| cluster.apps.stats(r))
        .map(|s| s.stale_events)
        .sum();
    drop(cluster);
    eprintln!(
        "  done in {:.1}s; everything the demo started is stopped",
        t0.elapsed().as_secs_f64()
    );
    Ok(Summary {
        phases,
        clients: opts.clients,
        phase_seconds: opts.phase.as_secs_f64(),
        replication_lag_ms: opts.lag.as_millis() as u64,
        fast_failover: opts.fast_failover,
        stale_events_ignored: stale,
        store: if opts.store_etcd { "etcd" } else { "memory" }.into(),
        outage,
    })
}

/// Phase 4: the tether workload while every discovery node is down for
/// `length`, and a reuse check with one session's refresh token.
async fn outage_phase(
    opts: &DemoOptions,
    cluster: &mut cluster::Cluster,
    proxies: Vec<String>,
    length: Duration,
) -> Result<(PhaseReport, OutageReport), DemoError> {
    let down_at = Duration::from_secs(2);
    let phase_opts = DemoOptions {
        phase: down_at + length + Duration::from_secs(8),
        ..opts.clone()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DemoError::Start(e.to_string()))?;
    // The session whose refresh token is replayed after the outage (a
    // sample-app user the simulated clients do not use).
    let (a, b) = (proxies[0].clone(), proxies[proxies.len() - 1].clone());
    let r = http
        .post(format!("{a}/auth/login"))
        .json(&serde_json::json!({"username": "bob", "password": "demo"}))
        .send()
        .await
        .map_err(|e| DemoError::Start(format!("replay-check login: {e}")))?;
    let old = r
        .headers()
        .get("tether-refresh-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let refresh = |url: String, token: String| {
        let http = http.clone();
        async move {
            match http
                .post(format!("{url}/auth/refresh"))
                .json(&serde_json::json!({"refreshToken": token}))
                .send()
                .await
            {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.json::<serde_json::Value>().await.unwrap_or_default())
                }
                Err(_) => (0, serde_json::Value::Null),
            }
        }
    };
    let name = format!("tether, discovery down {} s", length.as_secs());
    let load = load::through_tether(&phase_opts, proxies, &name, None);
    let driver = async {
        tokio::time::sleep(down_at).await;
        cluster.discovery_down();
        eprintln!("  every discovery node is down");
        tokio::time::sleep(length).await;
        let (s, v) = refresh(a.clone(), old.clone()).await;
        let extended =
            s == 200 && v["reason"] == "discovery_unavailable" && v["refreshToken"] == old.as_str();
        let during = format!(
            "refresh during the outage: {s} {}",
            if s == 200 {
                v["reason"].to_string()
            } else {
                v.to_string()
            }
        );
        cluster.discovery_up(&opts.tether_bin)?;
        eprintln!("  discovery is back");
        // The first refresh after discovery returns rotates; then the old
        // token is a replay, and its family is revoked everywhere.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut new = None;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (s, v) = refresh(a.clone(), old.clone()).await;
            if s == 200 && v["refreshToken"] != old.as_str() {
                new = v["refreshToken"].as_str().map(str::to_owned);
                break;
            }
            last = format!("{s} {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (detail, caught) = match new {
            None => (
                format!(
                    "{during}; no rotation within 30 s of discovery's return, last answer {last}"
                ),
                false,
            ),
            Some(new) => {
                // Past discovery's grace window (10 s by default), within
                // which a retry of the old token gets the same successor.
                tokio::time::sleep(Duration::from_secs(11)).await;
                let (replay, _) = refresh(b.clone(), old.clone()).await;
                let (after, _) = refresh(a.clone(), new).await;
                (
                    format!(
                        "{during}; rotated; old token replayed: {replay}; successor then: {after}"
                    ),
                    replay == 401 && after == 401,
                )
            }
        };
        Ok::<_, DemoError>(OutageReport {
            outage_seconds: length.as_secs_f64(),
            extended,
            reuse_caught: caught,
            detail,
        })
    };
    let (p4, report) = tokio::join!(load, driver);
    Ok((p4, report?))
}

/// The summary as a table for people.
pub fn table(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let relocks = |p: &PhaseReport| {
        if p.relocks.is_empty() {
            "-".to_owned()
        } else {
            p.relocks
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "\n{:<30} {:>9} {:>7} {:>9}  {:<10} relocks (lock changes by reason)",
        "phase", "workflows", "failed", "restarted", "recovery"
    );
    let _ = writeln!(out, "{}", "-".repeat(100));
    for (i, p) in s.phases.iter().enumerate() {
        let recovery = match (i, p.recovery_seconds, p.affected_clients) {
            (_, Some(r), Some(_)) => format!("{r:.2} s"),
            (_, None, Some(_)) => "not all".to_owned(),
            _ => "-".to_owned(),
        };
        let restarted = if i == 0 {
            "-".to_owned()
        } else {
            p.restarted.to_string()
        };
        let _ = writeln!(
            out,
            "{:<30} {:>9} {:>7} {:>9}  {:<10} {}",
            format!("{}. {}", i + 1, p.name),
            p.workflows,
            p.failed,
            restarted,
            recovery,
            relocks(p)
        );
    }
    if let Some(p1) = s.phases.first() {
        if !p1.failure_causes.is_empty() {
            let causes: Vec<String> = p1
                .failure_causes
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            let _ = writeln!(out, "\nphase 1 failures: {}", causes.join(", "));
        }
    }
    for p in s.phases.iter().skip(1) {
        if !p.failure_causes.is_empty() {
            let causes: Vec<String> = p
                .failure_causes
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            let _ = writeln!(out, "{} failures: {}", p.name, causes.join(", "));
        }
        if !p.other_errors.is_empty() {
            let causes: Vec<String> = p
                .other_errors
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            let _ = writeln!(
                out,
                "{} errors outside workflows: {}",
                p.name,
                causes.join(", ")
            );
        }
    }
    let replays: Vec<String> = s
        .phases
        .iter()
        .skip(1)
        .map(|p| format!("{} {}", p.name, p.replayed))
        .collect();
    if !replays.is_empty() {
        let _ = writeln!(
            out,
            "steps answered by an Idempotency-Key replay (resent, not applied twice): {}",
            replays.join(", ")
        );
    }
    if let Some(o) = &s.outage {
        let p4 = s.phases.get(3);
        let _ = writeln!(
            out,
            "phase 4: discovery down {:.0} s (access tokens live 60 s + 10 s leeway): {} users signed out; refresh during the outage kept the refresh token: {}; reuse detection after discovery returned: {} ({})",
            o.outage_seconds,
            p4.and_then(|p| p.signed_out).unwrap_or(0),
            if o.extended { "yes" } else { "NO" },
            if o.reuse_caught { "replay refused, family revoked" } else { "NOT WORKING" },
            o.detail
        );
    }
    if let Some(p3) = s.phases.get(2) {
        if let (Some(a), Some(m)) = (p3.affected_clients, p3.clients_moved) {
            let _ = writeln!(
                out,
                "phase 3: {a} clients were locked to the killed server; {m} moved; {} workflows restarted on their new server",
                p3.restarted
            );
        }
    }
    let _ = writeln!(
        out,
        "{} clients, {:.0} s per phase, replication lag {} ms, fast failover {}, discovery store {}; {} stale replication events ignored by the apps",
        s.clients,
        s.phase_seconds,
        s.replication_lag_ms,
        if s.fast_failover { "on" } else { "off" },
        if s.store == "etcd" { "etcd (3 members, 2 discovery nodes)" } else { "memory (1 node)" },
        s.stale_events_ignored
    );
    out
}

/// Simulated clients the live page's crowd runs by default (`--serve`).
pub const CROWD: usize = 9;

/// The page's own client waits this long in "Reconnecting…" (long enough
/// to watch the countdown; the crowd uses `reconnect_wait`).
pub const PAGE_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// `tether demo --serve`: start the cluster with the live page on
/// `page_listen` (port 0: any free port), `crowd` simulated clients,
/// print where everything is (and one `TETHER_DEMO_READY {json}` line for
/// scripts), wait for Ctrl-C or SIGTERM, stop everything.
pub fn serve(
    opts: &DemoOptions,
    page_listen: std::net::SocketAddr,
    crowd: usize,
) -> Result<(), DemoError> {
    opts.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use std::io::Write;
        let listener = tokio::net::TcpListener::bind(page_listen).await?;
        let page = listener.local_addr()?;
        let page_url = format!("http://{page}/");
        let mut opts = opts.clone();
        // The proxies allow the page's origin (docs/browser.md).
        opts.cors_origins.push(format!("http://{page}"));
        if page.ip().is_loopback() {
            opts.cors_origins
                .push(format!("http://localhost:{}", page.port()));
        }
        let cluster = cluster::Cluster::start(&opts).await?;
        println!("tether demo cluster is up (Ctrl-C stops everything)\n");
        println!("discovery   {}/v1/servers   (metrics: {}/metrics)", cluster.discovery_url, cluster.discovery_url);
        for r in &cluster.regions {
            println!(
                "region {:<4} proxy {}   admin {}/metrics   app {}",
                r.code, r.proxy_url, r.admin_url, r.app_url
            );
        }
        let eu = &cluster.regions[0].proxy_url;
        println!("\ntry:");
        println!("  curl -si -X POST {eu}/auth/login -H 'content-type: application/json' -d '{{\"username\":\"carol\",\"password\":\"demo\"}}'");
        println!("  curl -s {eu}/orders/x -H \"authorization: Bearer $ACCESS\"     # with the Tether-Access-Token from the login");
        println!("  curl -s {eu}/closestToMe");
        println!("configs and logs: {}", cluster.logs().display());

        let machine = serde_json::json!({
            "page": page_url,
            "api": format!("{page_url}api/state"),
            "discovery": cluster.discovery_url,
            "regions": cluster.regions.iter().map(|r| serde_json::json!({
                "code": r.code, "serverId": r.server_id, "proxyUrl": r.proxy_url,
                "adminUrl": r.admin_url, "appUrl": r.app_url,
            })).collect::<Vec<_>>(),
        });
        let proxies: Vec<String> = cluster.regions.iter().map(|r| r.proxy_url.clone()).collect();
        let live = live::Live::new(crowd);
        live.note(
            "info",
            None,
            format!("demo up: {} regions, {crowd} simulated clients", cluster.regions.len()),
        );
        let crowd = live::start_crowd(live.clone(), proxies, crowd, opts.reconnect_wait);
        let web = std::sync::Arc::new(web::Web {
            cluster: tokio::sync::Mutex::new(cluster),
            live,
            bin: opts.tether_bin.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .build()
                .unwrap_or_default(),
            reconnect_wait_ms: PAGE_RECONNECT_WAIT.as_millis() as u64,
        });
        let server = tokio::spawn(web::serve(listener, web.clone()));
        println!("\nlive page   {page_url}   (open it in a browser)");
        println!("TETHER_DEMO_READY {machine}");
        std::io::stdout().flush()?;

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        eprintln!("stopping …");
        server.abort();
        let _ = server.await;
        for t in crowd {
            t.abort();
            let _ = t.await;
        }
        // The last reference: dropping it stops every process.
        drop(web);
        Ok(())
    })
}
