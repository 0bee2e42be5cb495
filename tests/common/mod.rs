//! The shared test kit: starts real `tether` processes (discovery, proxies)
//! and small in-process upstream apps, all on 127.0.0.1 with ephemeral
//! ports, and tears everything down when dropped.
//!
//! Builder style: `Cluster::new().discovery(..)`, `cluster.proxy("eu-1",
//! "eu").upstream(&app).start()`. Child processes are SIGKILLed on drop,
//! so a failing test never leaves a process behind; their logs go to files
//! in the cluster's temp dir and are printed when a test panics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// A port that was free a moment ago. Pingora binds by address, so the
/// kit reserves ports this way; the window for a clash is tiny.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Kills the process now (a real process death, as in production).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("----- last log lines of {} -----", self.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Spawns `tether <args>`, stderr to `log`, and returns once a stdout line
/// contains `ready` (the text after it is returned) or panics after 20 s.
fn spawn(
    name: &str,
    args: &[&str],
    log: &Path,
    ready: &str,
    env: &[(&str, &str)],
) -> (Proc, String) {
    let log_file = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(TETHER);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .env("TETHER_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tether");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(i) = line.find(&ready) {
                    let _ = tx.send(line[i + ready.len()..].trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    let proc = Proc {
        name: name.to_owned(),
        child: Some(child),
        log: log.to_owned(),
    };
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(rest) => (proc, rest),
        Err(_) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{name} did not become ready; log:\n{text}");
        }
    }
}

/// Waits until a TCP connect to `addr` succeeds.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 50 ms until it returns true, or panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ cluster

/// Timing knobs shared by discovery and proxies, small for tests.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub ttl_ms: u64,
    pub warmup_ms: u64,
    pub health_interval_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 200,
            ttl_ms: 1200,
            warmup_ms: 0,
            health_interval_ms: 200,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub timing: Timing,
    /// Extra TOML lines for the `[discovery]` table of discovery's config.
    pub discovery_extra: String,
    pub discovery: Option<Discovery>,
    pub http: reqwest::Client,
}

pub struct Discovery {
    pub proc: Proc,
    pub url: String,
    pub addr: SocketAddr,
}

impl Cluster {
    pub fn new(timing: Timing) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(TETHER)
            .args(["keygen", "--dir"])
            .arg(dir.path())
            .output()
            .expect("tether keygen");
        assert!(out.status.success(), "keygen failed: {out:?}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        Cluster {
            dir,
            timing,
            discovery_extra: String::new(),
            discovery: None,
            http,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cluster_token(&self) -> String {
        std::fs::read_to_string(self.path("cluster.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.path("admin.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    /// Starts (or restarts, on `port`) the discovery process.
    pub fn start_discovery(&mut self, port: u16) -> &Discovery {
        let t = self.timing;
        let conf = format!(
            "[discovery]\nlisten = \"127.0.0.1:{port}\"\nworker_threads = 1\nheartbeat_interval_ms = {}\n\
             ttl_ms = {}\nwarmup_ms = {}\ncluster_token_file = \"cluster.token\"\nadmin_token_file = \"admin.token\"\n{}\n",
            t.heartbeat_ms, t.ttl_ms, t.warmup_ms, self.discovery_extra
        );
        let path = self.path("discovery.toml");
        std::fs::write(&path, conf).expect("write config");
        let (proc, url) = spawn(
            "discovery",
            &["discovery", "--config", path.to_str().expect("utf-8 path")],
            &self.path("discovery.log"),
            "tether discovery listening on ",
            &[],
        );
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .expect("discovery address");
        self.discovery = Some(Discovery { proc, url, addr });
        self.discovery.as_ref().expect("just set")
    }

    pub fn discovery_url(&self) -> String {
        self.discovery
            .as_ref()
            .expect("discovery started")
            .url
            .clone()
    }

    pub fn proxy(&self, id: &str, region: &str) -> ProxyBuilder<'_> {
        ProxyBuilder {
            cluster: self,
            id: id.to_owned(),
            region: region.to_owned(),
            upstreams: Vec::new(),
            foreign_lock: "redirect",
            public_prefixes: vec!["/public/".to_owned()],
            access_ttl: 120,
            extra: String::new(),
            tokens_extra: String::new(),
            limits: String::new(),
            tls: None,
        }
    }

    /// The registry as discovery lists it.
    pub async fn servers(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/servers", self.discovery_url()))
            .send()
            .await
            .expect("list servers")
            .json()
            .await
            .expect("json")
    }

    /// Registers a server directly with discovery (a fake peer for
    /// placement tests); repeat within the TTL to keep it alive.
    pub async fn heartbeat(&self, id: &str, region: &str, url: &str, load: f64) {
        let r = self
            .http
            .post(format!("{}/v1/heartbeat", self.discovery_url()))
            .bearer_auth(self.cluster_token())
            .json(&serde_json::json!({"id": id, "region": region, "url": url, "load": load, "healthy": true}))
            .send()
            .await
            .expect("heartbeat");
        assert!(r.status().is_success(), "heartbeat refused: {}", r.status());
    }
}

pub struct ProxyBuilder<'c> {
    cluster: &'c Cluster,
    id: String,
    region: String,
    upstreams: Vec<SocketAddr>,
    foreign_lock: &'static str,
    public_prefixes: Vec<String>,
    access_ttl: u64,
    extra: String,
    tokens_extra: String,
    limits: String,
    tls: Option<(PathBuf, PathBuf)>,
}

pub struct Proxy {
    pub id: String,
    pub region: String,
    pub url: String,
    pub addr: SocketAddr,
    pub admin: String,
    pub config: PathBuf,
    pub proc: Proc,
}

impl ProxyBuilder<'_> {
    pub fn upstream(mut self, app: &Upstream) -> Self {
        self.upstreams.push(app.addr);
        self
    }

    pub fn upstream_addr(mut self, addr: SocketAddr) -> Self {
        self.upstreams.push(addr);
        self
    }

    pub fn forward(mut self) -> Self {
        self.foreign_lock = "forward";
        self
    }

    pub fn access_ttl(mut self, secs: u64) -> Self {
        self.access_ttl = secs;
        self
    }

    /// Extra TOML appended to the `[tokens]` table.
    pub fn tokens_extra(mut self, toml: &str) -> Self {
        self.tokens_extra.push_str(toml);
        self
    }

    /// Extra TOML appended to the `[routing]` table.
    pub fn routing_extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// TOML for a `[limits]` table.
    pub fn limits(mut self, toml: &str) -> Self {
        self.limits.push_str(toml);
        self
    }

    /// Serve HTTPS with this certificate chain and key; the proxy's `url`
    /// and public URL become `https://`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Writes the config and returns its path, without starting anything.
    pub fn write_config(&self, port: u16, admin_port: u16) -> PathBuf {
        let t = self.cluster.timing;
        let upstreams: Vec<String> = self.upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        let prefixes: Vec<String> = self
            .public_prefixes
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        let (scheme, tls) = match &self.tls {
            Some((cert, key)) => (
                "https",
                format!("tls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"),
            ),
            None => ("http", String::new()),
        };
        let conf = format!(
            r#"[server]
id = "{id}"
region = "{region}"
public_url = "{scheme}://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
worker_threads = 1
{tls}
[upstream]
addresses = [{upstreams}]
health_path = "/health"
health_interval_ms = {hi}
connect_timeout_ms = 500
read_timeout_ms = 5000

[discovery]
url = "{discovery}"
cluster_token_file = "cluster.token"
heartbeat_interval_ms = {hb}
poll_wait_seconds = 5
min_poll_interval_ms = 50
implausible_accept_after_seconds = 3

[tokens]
issuer = "tether-test"
audience = "tether-tests"
access_ttl_seconds = {ttl}
refresh_ttl_days = 7
leeway_seconds = 2
keyring_file = "keyring.toml"
{tokens_extra}

[login]
upstream_path = "/login"
subject = {{ json_pointer = "/userId" }}
home_region = {{ json_pointer = "/homeRegion" }}

[routing]
public_prefixes = [{prefixes}]
foreign_lock = "{fl}"
probe_timeout_ms = 300
{extra}

[limits]
{limits}
"#,
            id = self.id,
            region = self.region,
            upstreams = upstreams.join(", "),
            hi = t.health_interval_ms,
            discovery = self.cluster.discovery_url(),
            hb = t.heartbeat_ms,
            ttl = self.access_ttl,
            prefixes = prefixes.join(", "),
            fl = self.foreign_lock,
            extra = self.extra,
            tokens_extra = self.tokens_extra,
            limits = self.limits,
        );
        let path = self.cluster.path(&format!("proxy.{}.toml", self.id));
        std::fs::write(&path, conf).expect("write proxy config");
        path
    }

    /// Starts the proxy process and waits until it listens and its
    /// upstream passes a health check (when `wait_healthy`).
    pub async fn start(self) -> Proxy {
        self.start_on(free_port(), true).await
    }

    pub async fn start_on(self, port: u16, wait_healthy: bool) -> Proxy {
        let admin_port = free_port();
        let config = self.write_config(port, admin_port);
        let (proc, _) = spawn(
            &format!("proxy {}", self.id),
            &["proxy", "--config", config.to_str().expect("utf-8 path")],
            &self.cluster.path(&format!("proxy.{}.log", self.id)),
            "listening on",
            &[],
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_for_port(addr, Duration::from_secs(15)).await;
        let admin = format!("http://127.0.0.1:{admin_port}");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let proxy = Proxy {
            id: self.id,
            region: self.region,
            url: format!("{scheme}://127.0.0.1:{port}"),
            addr,
            admin,
            config,
            proc,
        };
        if wait_healthy {
            // The admin listener is plain HTTP even when the client
            // listener speaks TLS; its /healthz is the same check.
            let http = &self.cluster.http;
            eventually(Duration::from_secs(10), "proxy upstream healthy", || async {
                matches!(http.get(format!("{}/healthz", proxy.admin)).send().await, Ok(r) if r.status() == 200)
            })
            .await;
        }
        proxy
    }
}

impl Proxy {
    /// The registry view this proxy is using (admin `/registry`).
    pub async fn registry(&self, http: &reqwest::Client) -> serde_json::Value {
        http.get(format!("{}/registry", self.admin))
            .send()
            .await
            .expect("registry")
            .json()
            .await
            .expect("json")
    }

    /// Waits until this proxy's registry lists every id in `ids` as healthy.
    pub async fn wait_sees(&self, http: &reqwest::Client, ids: &[&str]) {
        eventually(
            Duration::from_secs(10),
            &format!("{} sees {ids:?}", self.id),
            || async {
                let reg = self.registry(http).await;
                let servers = reg["servers"].as_array().cloned().unwrap_or_default();
                ids.iter().all(|id| {
                    servers
                        .iter()
                        .any(|s| s["id"] == *id && s["healthy"] == true)
                })
            },
        )
        .await;
    }

    /// Waits until this proxy's registry no longer lists `id`.
    pub async fn wait_gone(&self, http: &reqwest::Client, id: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("{} forgets {id}", self.id),
            || async {
                let reg = self.registry(http).await;
                !reg["servers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .any(|s| s["id"] == id)
            },
        )
        .await;
    }

    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// The value of a metric line (first sample whose line starts with
/// `prefix`), e.g. `tether_proxy_requests_total{outcome="forwarded"`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ----------------------------------------------------------------- upstream

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// A small in-process upstream app: `/health` (switchable), `/login`
/// (`{"username","home"?}` → `{"userId","homeRegion"}`; user "nobody" is
/// refused), and everything else echoes. Records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        use axum::extract::State as AxState;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        #[derive(Clone)]
        struct St {
            name: String,
            healthy: Arc<AtomicBool>,
            seen: Arc<Mutex<Vec<Seen>>>,
            count: Arc<AtomicUsize>,
        }

        async fn any(
            AxState(st): AxState<St>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let path = uri.path().to_owned();
            if path == "/health" {
                return if st.healthy.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                };
            }
            let hm: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            st.count.fetch_add(1, Ordering::SeqCst);
            st.seen.lock().unwrap().push(Seen {
                method: method.to_string(),
                path: path.clone(),
                headers: hm.clone(),
            });
            let mut extra = HeaderMap::new();
            extra.insert("x-upstream", st.name.parse().unwrap());
            if path == "/login" {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let user = v["username"].as_str().unwrap_or("");
                if user.is_empty() || user == "nobody" {
                    return (
                        StatusCode::UNAUTHORIZED,
                        extra,
                        axum::Json(serde_json::json!({"error":"bad_credentials"})),
                    )
                        .into_response();
                }
                extra.insert("set-cookie", "app=1".parse().unwrap());
                // An app trying to speak the lock protocol must be ignored.
                extra.insert("tether-relock", "http://evil.example".parse().unwrap());
                return (
                    StatusCode::OK,
                    extra,
                    axum::Json(serde_json::json!({"userId": user, "homeRegion": v.get("home").cloned().unwrap_or(serde_json::Value::Null), "welcome": "hi"})),
                )
                    .into_response();
            }
            (
                StatusCode::OK,
                extra,
                axum::Json(serde_json::json!({
                    "upstream": st.name,
                    "path": path,
                    "subject": hm.get("x-tether-subject"),
                    "server": hm.get("x-tether-server"),
                })),
            )
                .into_response()
        }

        let st = St {
            name: name.to_owned(),
            healthy: Arc::new(AtomicBool::new(true)),
            seen: Arc::new(Mutex::new(Vec::new())),
            count: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new().fallback(any).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            addr,
            name: name.to_owned(),
            healthy: st.healthy,
            seen: st.seen,
            count: st.count,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

// ------------------------------------------------------------------ clients

/// What a login through a proxy returned.
#[derive(Clone, Debug)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub server_id: String,
    pub server_url: String,
    pub server_region: String,
    pub expires_in: u64,
    pub body: serde_json::Value,
}

pub async fn login(
    http: &reqwest::Client,
    proxy_url: &str,
    user: &str,
    home: Option<&str>,
) -> Login {
    let mut body = serde_json::json!({"username": user, "password": "pw"});
    if let Some(h) = home {
        body["home"] = h.into();
    }
    let r = http
        .post(format!("{proxy_url}/auth/login"))
        .json(&body)
        .send()
        .await
        .expect("login request");
    assert_eq!(r.status(), 200, "login status");
    let h = |name: &str| {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("login answer lacks {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let l = Login {
        access: h("tether-access-token"),
        refresh: h("tether-refresh-token"),
        server_id: h("tether-server-id"),
        server_url: h("tether-server-url"),
        server_region: h("tether-server-region"),
        expires_in: h("tether-expires-in").parse().unwrap(),
        body: serde_json::Value::Null,
    };
    Login {
        body: r.json().await.expect("login body"),
        ..l
    }
}

pub async fn refresh(
    http: &reqwest::Client,
    proxy_url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{proxy_url}/auth/refresh"))
        .json(&body)
        .send()
        .await
        .expect("refresh request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

/// Mints tokens with `tether token mint` and a proxy's config.
pub fn mint(config: &Path, sub: &str, srv: &str, region: &str) -> (String, String) {
    let out = Command::new(TETHER)
        .args(["token", "mint", "--config"])
        .arg(config)
        .args(["--sub", sub, "--srv", srv, "--region", region])
        .output()
        .expect("tether token mint");
    assert!(
        out.status.success(),
        "mint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("mint json");
    (
        v["accessToken"].as_str().unwrap().to_owned(),
        v["refreshToken"].as_str().unwrap().to_owned(),
    )
}
