//! Shared kit of the proxy benches (`benches/proxy.rs`, `benches/peers.rs`).
//!
//! Everything runs on 127.0.0.1 in child processes that are SIGKILLed when
//! dropped. The bench binary re-executes itself with `TETHER_BENCH_ROLE`
//! to play the parts that need Rust code: a plain Pingora pass-through
//! (`passthrough`), a tiny upstream when nginx is absent (`upstream`),
//! tether in-process for counting allocations (`tether-counted`), and the
//! load generator (`loadgen`). The method is the one of
//! `shared/notes/perf-baseline.md`: the proxy under test pinned alone to
//! core 1 with one worker thread, the upstream and the load generator on
//! core 0, keep-alive everywhere, the same connection count for all,
//! rounds interleaved (A B A B) and medians reported.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");
/// Closed-loop connections, for every target (the notes' `wrk -c32`).
pub const CONNECTIONS: usize = 32;
/// The id of the tether server under test; its tokens are locked to it.
pub const SERVER_ID: &str = "bench-1";
/// The HS256 secret, printable so HAProxy's `jwt_verify` can take it as a
/// string; 64 bytes, well above the 32-byte minimum.
pub const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

// ------------------------------------------------------------ allocations

/// A global allocator (mimalloc underneath) that counts allocations once
/// [`ALLOC_COUNTING`] is set, so the counting costs nothing in the
/// throughput runs.
pub struct Counting;

pub static ALLOC_COUNTING: AtomicBool = AtomicBool::new(false);
pub static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to mimalloc; the counter has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ALLOC_COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ALLOC_COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ALLOC_COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Starts a thread that writes the allocation count to `path` every 5 ms,
/// without allocating itself (fixed buffer, `write_at`).
fn publish_alloc_count(path: &str) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("alloc count file");
    ALLOC_COUNTING.store(true, Ordering::Relaxed);
    std::thread::spawn(move || loop {
        let mut buf = [b' '; 24];
        let mut n = ALLOCS.load(Ordering::Relaxed);
        let mut i = 20;
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[23] = b'\n';
        if file.write_at(&buf, 0).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    });
}

fn read_alloc_count(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ roles

const ROLE: &str = "TETHER_BENCH_ROLE";

/// Call first in `main`: when this process was started to play a role,
/// plays it and never returns.
pub fn run_role_if_asked() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{role}: {k} not set"));
    match role.as_str() {
        "passthrough" => {
            if let Ok(path) = std::env::var("TETHER_BENCH_ALLOC_FILE") {
                publish_alloc_count(&path);
            }
            passthrough::run(
                &env("TETHER_BENCH_LISTEN"),
                env("TETHER_BENCH_UPSTREAM").parse().expect("upstream"),
            )
        }
        "tether-counted" => {
            publish_alloc_count(&env("TETHER_BENCH_ALLOC_FILE"));
            let cfg =
                tether_proxy::config::load(Path::new(&env("TETHER_BENCH_CONFIG"))).expect("config");
            if let Err(e) = tether_proxy::run(cfg) {
                eprintln!("tether: {e}");
                std::process::exit(1);
            }
            std::process::exit(0)
        }
        "upstream" => tiny_upstream(&env("TETHER_BENCH_LISTEN")),
        "loadgen" => {
            let spec: LoadSpec =
                serde_json::from_str(&env("TETHER_BENCH_LOAD")).expect("load spec");
            let result = loadgen::run(&spec);
            println!("{}", serde_json::to_string(&result).expect("json"));
            std::process::exit(0)
        }
        other => panic!("unknown {ROLE} {other:?}"),
    }
}

/// The plain Pingora pass-through: no tether logic, the same runtime
/// settings as `tether_proxy::run` (one worker thread, no work stealing,
/// upstream keep-alive pool).
mod passthrough {
    use std::net::SocketAddr;

    use async_trait::async_trait;
    use pingora_core::server::configuration::ServerConf;
    use pingora_core::server::Server;
    use pingora_core::upstreams::peer::HttpPeer;
    use pingora_proxy::{ProxyHttp, Session};

    struct Pass {
        upstream: SocketAddr,
    }

    #[async_trait]
    impl ProxyHttp for Pass {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(
            &self,
            _s: &mut Session,
            _c: &mut (),
        ) -> pingora_core::Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
        }
    }

    pub fn run(listen: &str, upstream: SocketAddr) -> ! {
        let mut conf = ServerConf {
            threads: 1,
            work_stealing: false,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        conf.upstream_keepalive_pool_size = 256;
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Pass { upstream });
        svc.add_tcp(listen);
        server.add_service(svc);
        println!("pass-through listening on {listen}");
        server.run_forever()
    }
}

/// A minimal keep-alive HTTP/1.1 server answering 200 "ok" to anything
/// (including `/health`), for when nginx is not installed.
fn tiny_upstream(listen: &str) -> ! {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind upstream");
        println!("upstream listening on {listen}");
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = sock.read(&mut buf[have..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    // Answer every complete request head in the buffer (no
                    // request bodies in these benches).
                    let mut out = Vec::new();
                    let mut start = 0;
                    while let Some(end) = find(&buf[start..have], b"\r\n\r\n") {
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n");
                        start += end + 4;
                    }
                    buf.copy_within(start..have, 0);
                    have -= start;
                    if have == buf.len() || sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------- processes

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process and its descendants (nginx: master and worker).
    pub fn tree(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for e in dir.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    if let Some(stat) = proc_stat(pid) {
                        if stat.ppid == parent && !pids.contains(&pid) {
                            pids.push(pid);
                        }
                    }
                }
            }
            i += 1;
        }
        pids
    }

    /// CPU time (user + system) of the process tree so far.
    pub fn cpu(&self) -> Duration {
        let ticks: u64 = self
            .tree()
            .iter()
            .filter_map(|&p| proc_stat(p))
            .map(|s| s.utime + s.stime)
            .sum();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// Peak resident memory (VmHWM) of the process tree, bytes.
    pub fn peak_rss(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .sum::<u64>()
            * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Pingora lingers for its grace period on SIGTERM: kill outright.
        // nginx's worker outlives a SIGKILLed master, so the whole tree
        // goes (children first, listed before the master dies).
        let children: Vec<String> = self.tree().iter().skip(1).map(u32::to_string).collect();
        let _ = self.child.kill();
        if !children.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&children).status();
        }
        let _ = self.child.wait();
    }
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn proc_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A program from PATH or the sbin directories packages install into.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// `taskset -c CORE` when available, so that the proxy under test and the
/// load generator do not share a core.
pub struct Pinning {
    taskset: Option<PathBuf>,
}

impl Pinning {
    pub fn detect() -> Pinning {
        let taskset = find_bin("taskset");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if taskset.is_none() {
            println!("note: taskset not found (util-linux): processes are not pinned to cores");
        } else if cores < 2 {
            println!("note: fewer than 2 cores: processes are not pinned");
            return Pinning { taskset: None };
        }
        Pinning { taskset }
    }

    pub fn command(&self, core: usize, program: &Path) -> Command {
        match &self.taskset {
            Some(t) => {
                let mut c = Command::new(t);
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// The core for the proxy under test; the upstream and load generator
/// share the other.
pub const PROXY_CORE: usize = 1;
pub const LOAD_CORE: usize = 0;

/// A port nobody listens on right now (checked: Pingora binds with
/// SO_REUSEPORT, so a leftover instance would silently share the load).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        if TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(100),
        )
        .is_err()
        {
            return port;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Spawns `cmd` (stdout/stderr to `log`) as `name`.
pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc {
        name: name.to_owned(),
        child,
    }
}

/// One blocking GET on a fresh connection; the status code.
pub fn get_status(addr: SocketAddr, path: &str, bearer: Option<&str>) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Waits until `GET /` (with the token) answers 200, or gives up.
pub fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    bearer: Option<&str>,
    log: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{} exited ({status}):\n{text}", proc.name));
        }
        match get_status(addr, "/", bearer) {
            Ok(200) => return Ok(()),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} not ready within 20 s ({last})", proc.name))
}

// -------------------------------------------------------------- targets

/// What a load is sent to.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The process whose CPU and memory are measured.
    pub proc: Proc,
    pub bearer: bool,
    /// A tether's config, whose key ring signs the tokens this target gets
    /// ([`Target::token`]); `None` for the others, which get the HS256
    /// tether's token (HAProxy checks it, the rest ignore it).
    pub config: Option<PathBuf>,
}

impl Target {
    /// A fresh token for this target: minted with its own config when it
    /// is a tether, else with `hs256_config` (the HS256 tether's).
    pub fn token(&self, hs256_config: &Path) -> String {
        mint(self.config.as_deref().unwrap_or(hs256_config))
    }
}

/// A scratch directory for configs and logs, removed at the end.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tether-bench")
        .tempdir()
        .expect("temp dir");
    // nginx workers may run as another user: let them read their config.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
    }
    dir
}

/// The trivial upstream: nginx `return 200` with one worker when nginx is
/// installed, else the tiny Rust server. On the load generator's core.
pub fn start_upstream(pin: &Pinning, dir: &Path) -> (Proc, SocketAddr, &'static str) {
    let port = free_port();
    if let Some(nginx) = find_bin("nginx") {
        let conf = nginx_conf(dir, "upstream", port, "return 200 \"ok\\n\";", "");
        let mut cmd = pin.command(LOAD_CORE, &nginx);
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
        let log = dir.join("upstream.log");
        let mut p = spawn("nginx upstream", cmd, &log);
        match wait_ready(&mut p, addr(port), None, &log) {
            Ok(()) => return (p, addr(port), "nginx return 200 (1 worker)"),
            Err(e) => println!("note: nginx upstream failed, using the Rust upstream: {e}"),
        }
    } else {
        println!("note: nginx not found: the upstream is the bench's tiny Rust server (scripts/bench-deps.sh installs nginx)");
    }
    let port = free_port();
    let mut cmd = pin.command(LOAD_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "upstream")
        .env("TETHER_BENCH_LISTEN", addr(port).to_string());
    let log = dir.join("upstream.log");
    let mut p = spawn("rust upstream", cmd, &log);
    wait_ready(&mut p, addr(port), None, &log).expect("rust upstream");
    (p, addr(port), "tiny Rust server (tokio, 1 thread)")
}

/// An nginx config with one worker, keep-alive without request limits,
/// and `body` as the location's content.
fn nginx_conf(dir: &Path, name: &str, port: u16, body: &str, http_extra: &str) -> PathBuf {
    let d = dir.display();
    let text = format!(
        r#"worker_processes 1;
daemon off;
pid {d}/{name}.pid;
error_log {d}/{name}.error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/{name}-body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    {http_extra}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ {body} }}
    }}
}}
"#
    );
    let path = dir.join(format!("{name}.nginx.conf"));
    std::fs::write(&path, text).expect("write nginx config");
    path
}

/// Plain Pingora pass-through, pinned to the proxy core.
pub fn start_passthrough(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    alloc_file: Option<&Path>,
) -> Result<Target, String> {
    let port = free_port();
    let mut cmd = pin.command(PROXY_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "passthrough")
        .env("TETHER_BENCH_LISTEN", addr(port).to_string())
        .env("TETHER_BENCH_UPSTREAM", upstream.to_string());
    if let Some(f) = alloc_file {
        cmd.env("TETHER_BENCH_ALLOC_FILE", f);
    }
    let log = dir.join("passthrough.log");
    let mut p = spawn("plain Pingora", cmd, &log);
    wait_ready(&mut p, addr(port), None, &log)?;
    Ok(Target {
        name: "plain Pingora pass-through",
        addr: addr(port),
        proc: p,
        bearer: false,
        config: None,
    })
}

/// Which key ring a tether under test verifies its tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// HS256 with [`SECRET`] (the secret HAProxy's `jwt_verify` gets too),
    /// with the verified-token cache on (the default): after a token's
    /// first request, a hash lookup.
    Hs256,
    /// HS256 with `verified_cache_entries = 0`: the HMAC checked on every
    /// request (the fast path).
    Hs256Uncached,
    /// Ed25519, with the verified-token cache on (10,000 entries, the
    /// default): after a token's first request, a hash lookup.
    EdDsaCached,
    /// Ed25519 with `verified_cache_entries = 0`: a signature check on
    /// every request.
    EdDsaUncached,
}

impl Keys {
    /// The row's name in the benches' tables.
    pub fn row(self) -> &'static str {
        match self {
            Keys::Hs256 => "tether, HS256 token",
            Keys::Hs256Uncached => "tether, HS256 token (cache off)",
            Keys::EdDsaCached => "tether, EdDSA token (cached)",
            Keys::EdDsaUncached => "tether, EdDSA token (uncached)",
        }
    }
}

/// Writes a tether proxy config (the test kit's shape) with its own key
/// ring and a discovery URL nobody answers: the proxy then serves tokens
/// locked to itself and logs heartbeat failures (quietened). HS256 rings
/// share `keyring.toml` (always [`SECRET`]); an EdDSA ring is a fresh
/// Ed25519 key (`tether keygen --alg eddsa`'s format) in a file of its
/// own.
pub fn write_tether_config_with(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    keys: Keys,
) -> PathBuf {
    let (keyring_file, cache_entries) = match keys {
        Keys::Hs256 | Keys::Hs256Uncached => {
            let secret_hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
            std::fs::write(
                dir.join("keyring.toml"),
                format!("signing_kid = \"bench\"\n\n[[keys]]\nkid = \"bench\"\nalg = \"HS256\"\nsecret_hex = \"{secret_hex}\"\n"),
            )
            .expect("keyring");
            let entries = if keys == Keys::Hs256 { 10_000 } else { 0 };
            ("keyring.toml".to_owned(), entries)
        }
        Keys::EdDsaCached | Keys::EdDsaUncached => {
            let name = format!("keyring-eddsa.{port}.toml");
            std::fs::write(
                dir.join(&name),
                tether_proxy::secrets::keyring_text_eddsa("bench-ed"),
            )
            .expect("keyring");
            (name, if keys == Keys::EdDsaCached { 10_000 } else { 0 })
        }
    };
    std::fs::write(
        dir.join("cluster.token"),
        "bench-cluster-token-0123456789\n",
    )
    .expect("cluster token");
    let admin_port = free_port();
    let nobody = free_port();
    let conf = format!(
        r#"[server]
id = "{SERVER_ID}"
region = "eu"
public_url = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
worker_threads = 1

[upstream]
addresses = ["{upstream}"]
health_path = "/health"
health_interval_ms = 1000
connect_timeout_ms = 500
read_timeout_ms = 5000

[discovery]
url = "http://127.0.0.1:{nobody}"
cluster_token_file = "cluster.token"
heartbeat_interval_ms = 2000
poll_wait_seconds = 5
min_poll_interval_ms = 1000
implausible_accept_after_seconds = 3

[tokens]
issuer = "tether-bench"
audience = "tether-bench"
access_ttl_seconds = 300
refresh_ttl_days = 7
leeway_seconds = 2
keyring_file = "{keyring_file}"
verified_cache_entries = {cache_entries}

[login]
upstream_path = "/login"
subject = {{ json_pointer = "/userId" }}

[routing]
public_prefixes = []
foreign_lock = "redirect"
probe_timeout_ms = 300
"#
    );
    let path = dir.join(format!("proxy.{port}.toml"));
    std::fs::write(&path, conf).expect("write proxy config");
    path
}

/// A fresh access token locked to [`SERVER_ID`] (5 minutes).
pub fn mint(config: &Path) -> String {
    let cfg = tether_proxy::config::load(config).expect("bench proxy config");
    let tokens = tether_proxy::tokens::Tokens::new(&cfg.tokens);
    tokens
        .mint(
            "alice",
            tether_proxy::tokens::LockTarget {
                server_id: SERVER_ID,
                region: "eu",
            },
            None,
            None,
        )
        .expect("mint")
        .access
}

/// tether itself (the release binary) with an HS256 key ring, pinned to
/// the proxy core.
pub fn start_tether(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
) -> Result<(Target, PathBuf), String> {
    start_tether_with(pin, dir, upstream, Keys::Hs256)
}

/// tether (the release binary) verifying with `keys`, pinned to the proxy
/// core; its row is named after `keys`.
pub fn start_tether_with(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    keys: Keys,
) -> Result<(Target, PathBuf), String> {
    start_tether_binary(pin, dir, upstream, Path::new(TETHER), keys, keys.row())
}

/// Another build of tether (`TETHER_BENCH_COMPARE`), for before/after.
pub fn start_tether_binary(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    binary: &Path,
    keys: Keys,
    name: &'static str,
) -> Result<(Target, PathBuf), String> {
    let port = free_port();
    let config = write_tether_config_with(dir, port, upstream, keys);
    let mut cmd = pin.command(PROXY_CORE, binary);
    cmd.arg("proxy")
        .arg("--config")
        .arg(&config)
        .env("TETHER_LOG", "error");
    let log = dir.join(format!("tether.{port}.log"));
    let mut p = spawn("tether", cmd, &log);
    wait_ready(&mut p, addr(port), Some(&mint(&config)), &log)?;
    Ok((
        Target {
            name,
            addr: addr(port),
            proc: p,
            bearer: true,
            config: Some(config.clone()),
        },
        config,
    ))
}

/// tether's proxy in this bench process (counting allocator), verifying
/// with `keys`, for counting allocations per request.
pub fn start_tether_counted(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    alloc_file: &Path,
    keys: Keys,
) -> Target {
    let port = free_port();
    let config = write_tether_config_with(dir, port, upstream, keys);
    let mut cmd = pin.command(PROXY_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "tether-counted")
        .env("TETHER_BENCH_CONFIG", &config)
        .env("TETHER_BENCH_ALLOC_FILE", alloc_file);
    let log = dir.join(format!("tether-counted.{port}.log"));
    let mut p = spawn("tether (counted)", cmd, &log);
    wait_ready(&mut p, addr(port), Some(&mint(&config)), &log).unwrap_or_else(|e| panic!("{e}"));
    Target {
        name: keys.row(),
        addr: addr(port),
        proc: p,
        bearer: true,
        config: Some(config),
    }
}

/// nginx `proxy_pass` with upstream keep-alive, one worker.
pub fn start_nginx_proxy(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
) -> Result<Option<Target>, String> {
    let Some(nginx) = find_bin("nginx") else {
        println!("SKIP nginx proxy_pass: nginx not installed (scripts/bench-deps.sh)");
        return Ok(None);
    };
    let port = free_port();
    let extra =
        format!("upstream up {{ server {upstream}; keepalive 64; keepalive_requests 100000000; }}");
    let body = "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";";
    let conf = nginx_conf(dir, "proxy", port, body, &extra);
    let mut cmd = pin.command(PROXY_CORE, &nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
    let log = dir.join("nginx-proxy.log");
    let mut p = spawn("nginx proxy", cmd, &log);
    wait_ready(&mut p, addr(port), None, &log)?;
    Ok(Some(Target {
        name: "nginx proxy_pass",
        addr: addr(port),
        proc: p,
        bearer: false,
        config: None,
    }))
}

/// HAProxy doing tether's work: `jwt_verify` (HS256, same secret), the
/// algorithm pinned, `exp` checked, and routing on the `srv` claim (a
/// token for another server gets a 503).
pub fn start_haproxy(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    token: &str,
) -> Result<Option<Target>, String> {
    let Some(haproxy) = find_bin("haproxy") else {
        println!("SKIP HAProxy + jwt_verify: haproxy not installed (scripts/bench-deps.sh)");
        return Ok(None);
    };
    let port = free_port();
    let conf = format!(
        r#"global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{SECRET}") -m int 1 }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request set-var(txn.srv) var(txn.bearer),jwt_payload_query('$.srv')
    use_backend local if {{ var(txn.srv) -m str {SERVER_ID} }}
    default_backend refresh

backend local
    server up {upstream}

backend refresh
    http-request return status 503 content-type application/json string "{{\"error\":\"server_unavailable\",\"action\":\"refresh\"}}"
"#
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("write haproxy config");
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(&path)
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIP HAProxy + jwt_verify: this haproxy rejects the config (needs >= 2.5 built with OpenSSL): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Ok(None);
        }
        Err(e) => {
            println!("SKIP HAProxy + jwt_verify: cannot run haproxy: {e}");
            return Ok(None);
        }
    }
    let mut cmd = pin.command(PROXY_CORE, &haproxy);
    cmd.arg("-db").arg("-f").arg(&path);
    let log = dir.join("haproxy.log");
    let mut p = spawn("haproxy", cmd, &log);
    wait_ready(&mut p, addr(port), Some(token), &log)?;
    Ok(Some(Target {
        name: "HAProxy + jwt_verify + srv routing",
        addr: addr(port),
        proc: p,
        bearer: true,
        config: None,
    }))
}

// ----------------------------------------------------------------- loads

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub bearer: Option<String>,
    pub connections: usize,
    pub warmup_ms: u64,
    pub duration_ms: u64,
    /// Requests per second for an open-loop load; `None` = closed loop.
    pub rate: Option<f64>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    /// Non-200 answers and broken connections.
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Which generator produced this.
    pub tool: String,
}

/// Closed loop with wrk when installed (the notes' method), else the
/// bench's own generator.
pub fn closed_loop(pin: &Pinning, target: &Target, token: Option<&str>, secs: u64) -> LoadResult {
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
        return run(secs);
    }
    let spec = LoadSpec {
        addr: target.addr,
        bearer: bearer.map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 1000,
        duration_ms: secs * 1000,
        rate: None,
    };
    run_loadgen(pin, &spec)
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

fn parse_wrk(out: &str) -> LoadResult {
    let mut r = LoadResult {
        tool: "wrk".into(),
        ..LoadResult::default()
    };
    let dur = |s: &str| -> f64 {
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
    };
    for line in out.lines() {
        let l = line.trim();
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = dur(v),
            ["99%", v] => r.p99_us = dur(v),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse().unwrap_or(0);
                r.seconds = dur(secs.trim_end_matches(',')) / 1e6;
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

/// The bench's own HTTP/1.1 load generator: one thread (tokio current
/// thread), `connections` keep-alive connections.
///
/// Closed loop: each connection sends its next request when the previous
/// answer is in. Open loop: requests are due on a fixed schedule (rate /
/// connections per connection, staggered); a connection sends each one at
/// its due time, or at once when it is late. Coordinated omission is
/// corrected the way wrk2 does: when a request goes out late because the
/// previous answer on its connection came after its due time, its latency
/// counts from the due time, so a stall counts for every request it held
/// back. (When the connection was idle and only the timer woke late,
/// latency counts from the actual send: that delay is the generator's.)
mod loadgen {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{LoadResult, LoadSpec};

    struct Conn {
        lat_us: Vec<u32>,
        requests: u64,
        errors: u64,
    }

    pub fn run(spec: &LoadSpec) -> LoadResult {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let auth = spec
                .bearer
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n").into_bytes();
            let start = Instant::now() + Duration::from_millis(20);
            let measure_from = start + Duration::from_millis(spec.warmup_ms);
            let end = measure_from + Duration::from_millis(spec.duration_ms);
            let mut tasks = Vec::new();
            for i in 0..spec.connections {
                let request = request.clone();
                let spec = spec.clone();
                tasks.push(tokio::spawn(async move {
                    conn(i, &spec, &request, start, measure_from, end).await
                }));
            }
            let mut all = Vec::new();
            let (mut requests, mut errors) = (0, 0);
            for t in tasks {
                let c = t.await.expect("load task");
                all.extend(c.lat_us);
                requests += c.requests;
                errors += c.errors;
            }
            all.sort_unstable();
            let pct = |p: f64| {
                if all.is_empty() {
                    f64::NAN
                } else {
                    all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64
                }
            };
            let seconds = spec.duration_ms as f64 / 1000.0;
            LoadResult {
                requests,
                errors,
                seconds,
                rps: requests as f64 / seconds,
                p50_us: pct(0.50),
                p99_us: pct(0.99),
                p999_us: pct(0.999),
                tool: if spec.rate.is_some() {
                    "bench open loop"
                } else {
                    "bench closed loop"
                }
                .into(),
            }
        })
    }

    async fn conn(
        i: usize,
        spec: &LoadSpec,
        request: &[u8],
        start: Instant,
        measure_from: Instant,
        end: Instant,
    ) -> Conn {
        let mut c = Conn {
            lat_us: Vec::with_capacity(1 << 16),
            requests: 0,
            errors: 0,
        };
        tokio::time::sleep_until(start.into()).await;
        let Ok(mut sock) = TcpStream::connect(spec.addr).await else {
            c.errors += 1;
            return c;
        };
        let _ = sock.set_nodelay(true);
        let interval = spec
            .rate
            .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));
        let mut due = match interval {
            Some(iv) => start + iv.mul_f64(i as f64 / spec.connections as f64),
            None => start,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut prev_done = start;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let from = if interval.is_some() {
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                }
                // Late because our previous answer came late: count from
                // the due time (coordinated-omission correction).
                if prev_done > due {
                    due
                } else {
                    Instant::now()
                }
            } else {
                now
            };
            if sock.write_all(request).await.is_err() {
                c.errors += 1;
                break;
            }
            match read_response(&mut sock, &mut buf).await {
                Ok(status) => {
                    let done = Instant::now();
                    prev_done = done;
                    if from >= measure_from && done <= end {
                        c.requests += 1;
                        if status != 200 {
                            c.errors += 1;
                        }
                        c.lat_us.push(
                            done.duration_since(from).as_micros().min(u32::MAX as u128) as u32
                        );
                    }
                }
                Err(_) => {
                    c.errors += 1;
                    break;
                }
            }
            if let Some(iv) = interval {
                due += iv;
            }
        }
        c
    }

    /// Reads one response (Content-Length bodies only); its status.
    async fn read_response(sock: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<u16> {
        let mut have = 0;
        loop {
            let n = sock.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if let Some(end) = super::find(&buf[..have], b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("status"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .ok_or_else(|| std::io::Error::other("no content-length"))?;
                let mut body = have - (end + 4);
                while body < len {
                    let n = sock.read(&mut buf[..]).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    body += n;
                }
                return Ok(status);
            }
            if have == buf.len() {
                return Err(std::io::Error::other("response head too large"));
            }
        }
    }
}

// ------------------------------------------------------- measuring a run

/// One measured run of one target.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Run {
    pub load: LoadResult,
    /// CPU time of the target per request, microseconds.
    pub cpu_us_per_req: f64,
}

pub fn measured<F: FnOnce() -> LoadResult>(target: &Target, f: F) -> Run {
    let before = target.proc.cpu();
    let load = f();
    let cpu = target.proc.cpu().saturating_sub(before);
    let cpu_us_per_req = if load.requests > 0 {
        cpu.as_secs_f64() * 1e6 / load.requests as f64
    } else {
        f64::NAN
    };
    Run {
        load,
        cpu_us_per_req,
    }
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
    let spec = |ms: u64| LoadSpec {
        addr: target.addr,
        bearer: token.filter(|_| target.bearer).map(str::to_owned),
        connections: CONNECTIONS,
        warmup_ms: 0,
        duration_ms: ms,
        rate: None,
    };
    run_loadgen(pin, &spec(500));
    let settle = Duration::from_millis(50);
    std::thread::sleep(settle);
    let idle0 = read_alloc_count(file);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let idle = read_alloc_count(file) - idle0;
    let idle_rate = idle as f64 / t0.elapsed().as_secs_f64();
    let a0 = read_alloc_count(file);
    let t1 = Instant::now();
    let r = run_loadgen(pin, &spec(2000));
    std::thread::sleep(settle);
    let a1 = read_alloc_count(file);
    let background = idle_rate * t1.elapsed().as_secs_f64();
    let per = ((a1 - a0) as f64 - background).max(0.0) / r.requests.max(1) as f64;
    (per, r.requests)
}

/// Where JSON results go: the cargo target directory.
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
