//! Starting the demo's cluster on loopback: one discovery process, one
//! proxy process per region (the same `tether` binary, so killing a region
//! is a real process death) and the sample app (in-process, one listener
//! per region, replicating with lag).
//!
//! The shipped `conf/` files are the templates: the demo copies them into
//! a temporary folder, swaps the fixed ports for free ephemeral ones,
//! points each proxy at its region's app, shortens the timers for a
//! one-minute run, and generates fresh secrets with `tether keygen`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_testkit::conf::Conf;
use tether_testkit::{Proc, Spawn};

use crate::{DemoError, DemoOptions};

/// The demo's regions, in the order of the shipped configs.
pub const REGIONS: [&str; 3] = tether_testkit::conf::REGIONS;

pub struct Region {
    pub code: String,
    pub server_id: String,
    pub proxy_url: String,
    pub proxy_addr: SocketAddr,
    pub admin_url: String,
    pub app_url: String,
    /// SIGKILLed and reaped on drop; its stdin is a pipe the child watches
    /// (`TETHER_EXIT_WITH_PARENT`), so it also exits if the demo is killed.
    pub proxy: Proc,
}

pub struct Cluster {
    /// Kept so the configs and secrets outlive the processes using them.
    pub dir: tempfile::TempDir,
    pub discovery_url: String,
    pub discovery: Proc,
    /// `--store etcd`: the second discovery node (its URL and process).
    pub more_discovery: Vec<(String, Proc)>,
    /// Each discovery node's config and log, to start it again on its port.
    discovery_configs: Vec<(PathBuf, PathBuf)>,
    /// `--store etcd`: the three etcd members under discovery. Declared
    /// after the discovery processes, so it is stopped after them.
    pub etcd: Option<tether_testkit::Etcd>,
    pub regions: Vec<Region>,
    pub apps: tether_sampleapp::SampleCluster,
}

fn free_port() -> u16 {
    tether_testkit::free_port()
}

fn spawn(
    bin: &Path,
    name: &str,
    args: &[&str],
    log: &Path,
    ready: &str,
) -> Result<(Proc, String), DemoError> {
    let started = Spawn::new(name, bin)
        .args(args)
        .exit_with_parent()
        .env(
            "TETHER_LOG",
            std::env::var("TETHER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .log(log)
        .ready(ready)
        .start()
        .map_err(|e| DemoError::Start(e.to_string()))?;
    let rest = started.first().to_owned();
    Ok((started.proc, rest))
}

/// Starts `bin args.. config` again after a kill (the page's restart
/// buttons), with the same config and ready line.
pub fn spawn_again(
    bin: &Path,
    name: &str,
    args: &[&str],
    config: &Path,
    log: &Path,
    ready: &str,
) -> Result<Proc, DemoError> {
    let config = config.to_string_lossy();
    let mut all: Vec<&str> = args.to_vec();
    all.push(&config);
    spawn(bin, name, &all, log, ready).map(|(proc, _)| proc)
}

fn write_toml(path: &Path, conf: &Conf) -> Result<(), DemoError> {
    conf.write(path)
        .map_err(|e| DemoError::Start(format!("writing {}: {e}", path.display())))?;
    Ok(())
}

async fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), DemoError> {
    if tether_testkit::port_open(addr, within).await {
        Ok(())
    } else {
        Err(DemoError::Start(format!("nothing listens on {addr}")))
    }
}

impl Cluster {
    pub async fn start(opts: &DemoOptions) -> Result<Cluster, DemoError> {
        let dir = tempfile::Builder::new().prefix("tether-demo-").tempdir()?;
        let bin = &opts.tether_bin;
        let secrets = dir.path().join("secrets");
        let out = Command::new(bin)
            .arg("keygen")
            .arg("--dir")
            .arg(&secrets)
            .output()?;
        if !out.status.success() {
            return Err(DemoError::Start(format!(
                "tether keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }

        let apps = tether_sampleapp::SampleCluster::start(
            tether_sampleapp::ClusterConfig::new(REGIONS).with_lag(opts.lag, opts.jitter),
        )
        .await
        .map_err(|e| DemoError::Start(format!("sample app: {e}")))?;

        // Discovery: one node in memory, or (`--store etcd`) two nodes
        // over a three-member etcd cluster. Fixed ports, so an outage can
        // start the same nodes again where the proxies look for them.
        let etcd = if opts.store_etcd {
            Some(tether_testkit::Etcd::start(3).await)
        } else {
            None
        };
        let nodes = if etcd.is_some() { 2 } else { 1 };
        let mut discovery_procs = Vec::new();
        let mut discovery_configs = Vec::new();
        for n in 0..nodes {
            let mut disc = Conf::discovery();
            disc.set("discovery", "listen", format!("127.0.0.1:{}", free_port()))
                .set(
                    "discovery",
                    "heartbeat_interval_ms",
                    opts.heartbeat.as_millis() as i64,
                )
                .set("discovery", "ttl_ms", opts.ttl.as_millis() as i64)
                // A brand-new registry has nothing to protect during warm-up.
                .set("discovery", "warmup_ms", 0i64);
            if let Some(etcd) = &etcd {
                disc.set("store", "kind", "etcd")
                    .set("store", "endpoints", etcd.endpoints())
                    .set("store", "prefix", "/tether-demo/");
            }
            let name = if n == 0 {
                "discovery".to_owned()
            } else {
                format!("discovery{}", n + 1)
            };
            let disc_path = dir.path().join(format!("{name}.toml"));
            let log = dir.path().join(format!("{name}.log"));
            write_toml(&disc_path, &disc)?;
            let (proc, url) = spawn(
                bin,
                &name,
                &["discovery", "--config", &disc_path.to_string_lossy()],
                &log,
                "tether discovery listening on ",
            )?;
            discovery_procs.push((url, proc));
            discovery_configs.push((disc_path, log));
        }
        let discovery_urls: Vec<String> = discovery_procs.iter().map(|(u, _)| u.clone()).collect();
        let (discovery_url, discovery) = discovery_procs.remove(0);

        let mut regions = Vec::new();
        for code in REGIONS {
            let mut conf = Conf::proxy(code)
                .ok_or_else(|| DemoError::Start(format!("no shipped conf/proxy.{code}.toml")))?;
            let port = free_port();
            let admin = free_port();
            let app = apps
                .addr(code)
                .ok_or_else(|| DemoError::Start(format!("sample app has no region {code}")))?;
            let server_id = conf.get_str("server", "id").unwrap_or(code).to_owned();
            conf.set("server", "listen", format!("127.0.0.1:{port}"));
            conf.set("server", "public_url", format!("http://127.0.0.1:{port}"));
            conf.set("server", "admin_listen", format!("127.0.0.1:{admin}"));
            conf.set("upstream", "addresses", vec![app.to_string()]);
            conf.set("upstream", "health_interval_ms", 250i64);
            conf.set("discovery", "urls", discovery_urls.clone());
            if opts.discovery_outage.is_some() {
                // The shortest allowed lifetime, so the outage outlasts it.
                conf.set("tokens", "access_ttl_seconds", 60i64);
            }
            conf.set(
                "discovery",
                "heartbeat_interval_ms",
                opts.heartbeat.as_millis() as i64,
            );
            conf.set("discovery", "min_poll_interval_ms", 50i64);
            conf.set("routing", "fast_failover", opts.fast_failover);
            conf.set("routing", "probe_timeout_ms", 300i64);
            // Workflow steps carry Idempotency-Keys (the SDK adds them): a
            // step resent after a failover or a lost answer is replayed,
            // not applied twice (docs/idempotency.md).
            conf.set("idempotency", "enabled", true);
            conf.set(
                "idempotency",
                "store",
                toml::Value::Table(toml::Table::from_iter([(
                    "kind".to_owned(),
                    toml::Value::from("memory"),
                )])),
            );
            if !opts.cors_origins.is_empty() {
                conf.set("cors", "allowed_origins", opts.cors_origins.clone());
            }
            let path = dir.path().join(format!("proxy.{code}.toml"));
            write_toml(&path, &conf)?;
            let (proxy, _) = spawn(
                bin,
                &format!("proxy {code}"),
                &["proxy", "--config", &path.to_string_lossy()],
                &dir.path().join(format!("proxy.{code}.log")),
                "listening on",
            )?;
            let proxy_addr: SocketAddr = ([127, 0, 0, 1], port).into();
            regions.push(Region {
                code: code.to_owned(),
                server_id,
                proxy_url: format!("http://127.0.0.1:{port}"),
                proxy_addr,
                admin_url: format!("http://127.0.0.1:{admin}"),
                app_url: apps.url(code).unwrap_or_default().to_owned(),
                proxy,
            });
        }
        for r in &regions {
            wait_for_port(r.proxy_addr, Duration::from_secs(15)).await?;
        }
        let cluster = Cluster {
            dir,
            discovery_url,
            discovery,
            more_discovery: discovery_procs,
            discovery_configs,
            etcd,
            regions,
            apps,
        };
        cluster.wait_converged(Duration::from_secs(15)).await?;
        Ok(cluster)
    }

    /// Waits until every proxy's registry lists every server as healthy.
    async fn wait_converged(&self, within: Duration) -> Result<(), DemoError> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for r in &self.regions {
                let ok = match http.get(format!("{}/registry", r.admin_url)).send().await {
                    Ok(resp) => match resp.json::<tether_protocol::wire::Snapshot>().await {
                        Ok(snap) => self.regions.iter().all(|o| {
                            snap.servers
                                .iter()
                                .any(|s| s.id == o.server_id && s.healthy)
                        }),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                all &= ok;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DemoError::Start(format!(
                    "the proxies did not all see each other within {within:?}; logs are in {}",
                    self.dir.path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every discovery node goes away: over etcd the processes are killed
    /// (the state is in etcd); in memory the one node is frozen
    /// (`SIGSTOP`), as killing it would lose the refresh families it holds.
    pub fn discovery_down(&mut self) {
        if self.etcd.is_some() {
            self.discovery.kill();
            for (_, p) in &mut self.more_discovery {
                p.kill();
            }
        } else {
            self.discovery.signal("STOP");
        }
    }

    /// Discovery comes back on the same ports.
    pub fn discovery_up(&mut self, bin: &Path) -> Result<(), DemoError> {
        if self.etcd.is_none() {
            self.discovery.signal("CONT");
            return Ok(());
        }
        let mut procs = Vec::new();
        for (i, (config, log)) in self.discovery_configs.iter().enumerate() {
            let (proc, _) = spawn(
                bin,
                &format!("discovery {}", i + 1),
                &["discovery", "--config", &config.to_string_lossy()],
                log,
                "tether discovery listening on ",
            )?;
            procs.push(proc);
        }
        let mut procs = procs.into_iter();
        if let Some(first) = procs.next() {
            self.discovery = first;
        }
        for ((_, slot), p) in self.more_discovery.iter_mut().zip(procs) {
            *slot = p;
        }
        Ok(())
    }

    pub fn region(&self, code: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.code == code)
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}
