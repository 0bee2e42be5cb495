//! Starting the demo's cluster on loopback: one discovery process, one
//! proxy process per region (the same `tether` binary, so killing a region
//! is a real process death) and the sample app (in-process, one listener
//! per region, replicating with lag).
//!
//! The shipped `conf/` files are the templates: the demo copies them into
//! a temporary folder, swaps the fixed ports for free ephemeral ones,
//! points each proxy at its region's app, shortens the timers for a
//! one-minute run, and generates fresh secrets with `tether keygen`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{DemoError, DemoOptions};

const DISCOVERY_CONF: &str = include_str!("../../conf/discovery.toml");
const PROXY_CONFS: [(&str, &str); 3] = [
    ("eu", include_str!("../../conf/proxy.eu.toml")),
    ("us", include_str!("../../conf/proxy.us.toml")),
    ("ap", include_str!("../../conf/proxy.ap.toml")),
];

/// The demo's regions, in the order of the shipped configs.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// A child process, SIGKILLed and reaped on drop. Its stdin is a pipe the
/// child watches (`TETHER_EXIT_WITH_PARENT`), so it also exits if the demo
/// itself is killed.
pub struct ChildProc {
    pub name: String,
    child: Option<Child>,
}

impl ChildProc {
    /// A placeholder owning no process.
    pub fn empty() -> ChildProc {
        ChildProc {
            name: String::new(),
            child: None,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Err(e) = c.kill() {
                tracing::debug!("killing {}: {e}", self.name);
            }
            if let Err(e) = c.wait() {
                tracing::debug!("reaping {}: {e}", self.name);
            }
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Region {
    pub code: String,
    pub server_id: String,
    pub proxy_url: String,
    pub proxy_addr: SocketAddr,
    pub admin_url: String,
    pub app_url: String,
    pub proxy: ChildProc,
}

pub struct Cluster {
    /// Kept so the configs and secrets outlive the processes using them.
    pub dir: tempfile::TempDir,
    pub discovery_url: String,
    pub discovery: ChildProc,
    pub regions: Vec<Region>,
    pub apps: tether_sampleapp::SampleCluster,
}

fn free_port() -> Result<u16, DemoError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(
    bin: &Path,
    name: &str,
    args: &[&str],
    log: &Path,
    ready: &str,
) -> Result<(ChildProc, String), DemoError> {
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .env("TETHER_EXIT_WITH_PARENT", "1")
        .env(
            "TETHER_LOG",
            std::env::var("TETHER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .map_err(|e| DemoError::Start(format!("cannot start {} {name}: {e}", bin.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| DemoError::Start(format!("{name}: no stdout")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find(&ready) {
                if let Some(tx) = tx.take() {
                    // The receiver may have given up; nothing to do then.
                    tx.send(line[i + ready.len()..].trim().to_owned()).ok();
                }
            }
        }
    });
    let proc = ChildProc {
        name: name.to_owned(),
        child: Some(child),
    };
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(rest) => Ok((proc, rest)),
        Err(_) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Err(DemoError::Start(format!(
                "{name} did not start; its log says:\n{text}"
            )))
        }
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    if let Some(toml::Value::Table(t)) = table.get_mut(section) {
        t.insert(key.to_owned(), value.into());
    }
}

fn write_toml(path: &Path, table: &toml::Table) -> Result<(), DemoError> {
    let text = toml::to_string(table)
        .map_err(|e| DemoError::Start(format!("writing {}: {e}", path.display())))?;
    std::fs::write(path, text)?;
    Ok(())
}

fn parse_shipped(name: &str, text: &str) -> Result<toml::Table, DemoError> {
    text.parse()
        .map_err(|e| DemoError::Start(format!("shipped conf/{name} is not valid TOML: {e}")))
}

async fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), DemoError> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(DemoError::Start(format!("nothing listens on {addr}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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

        // Discovery.
        let mut disc = parse_shipped("discovery.toml", DISCOVERY_CONF)?;
        set(&mut disc, "discovery", "listen", "127.0.0.1:0");
        set(
            &mut disc,
            "discovery",
            "heartbeat_interval_ms",
            opts.heartbeat.as_millis() as i64,
        );
        set(
            &mut disc,
            "discovery",
            "ttl_ms",
            opts.ttl.as_millis() as i64,
        );
        // A brand-new registry has nothing to protect during warm-up.
        set(&mut disc, "discovery", "warmup_ms", 0i64);
        let disc_path = dir.path().join("discovery.toml");
        write_toml(&disc_path, &disc)?;
        let (discovery, url) = spawn(
            bin,
            "discovery",
            &["discovery", "--config", &disc_path.to_string_lossy()],
            &dir.path().join("discovery.log"),
            "tether discovery listening on ",
        )?;
        let discovery_url = url;

        let mut regions = Vec::new();
        for (code, text) in PROXY_CONFS {
            let mut conf = parse_shipped(&format!("proxy.{code}.toml"), text)?;
            let port = free_port()?;
            let admin = free_port()?;
            let app = apps
                .addr(code)
                .ok_or_else(|| DemoError::Start(format!("sample app has no region {code}")))?;
            let server_id = conf
                .get("server")
                .and_then(|s| s.get("id"))
                .and_then(|v| v.as_str())
                .unwrap_or(code)
                .to_owned();
            set(&mut conf, "server", "listen", format!("127.0.0.1:{port}"));
            set(
                &mut conf,
                "server",
                "public_url",
                format!("http://127.0.0.1:{port}"),
            );
            set(
                &mut conf,
                "server",
                "admin_listen",
                format!("127.0.0.1:{admin}"),
            );
            set(&mut conf, "upstream", "addresses", vec![app.to_string()]);
            set(&mut conf, "upstream", "health_interval_ms", 250i64);
            set(&mut conf, "discovery", "url", discovery_url.clone());
            set(
                &mut conf,
                "discovery",
                "heartbeat_interval_ms",
                opts.heartbeat.as_millis() as i64,
            );
            set(&mut conf, "discovery", "min_poll_interval_ms", 50i64);
            set(&mut conf, "routing", "fast_failover", opts.fast_failover);
            set(&mut conf, "routing", "probe_timeout_ms", 300i64);
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

    pub fn region(&self, code: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.code == code)
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}
