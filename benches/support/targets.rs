//! The targets a load is sent to: the upstream, a plain Pingora
//! pass-through, tether (release binary or in-process, counted), nginx and
//! HAProxy, each started on the right core and waited for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tether_testkit::conf::Conf;
use tether_testkit::{addr, free_port, Proc};

use super::process::{find_bin, spawn, wait_ready, Pinning, LOAD_CORE, PROXY_CORE};
use super::{ROLE, SECRET, SERVER_ID, TETHER};

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
    passthrough(pin, dir, upstream, alloc_file, false)
}

/// [`start_passthrough`] with tether's default upstream timeouts set on
/// its peer (connect 1 s, read 30 s, idle 1.5 s): Pingora's own cost of
/// those limits, which the bare pass-through does not pay (the roles'
/// `TETHER_BENCH_PASS_TIMEOUTS`).
pub fn start_passthrough_with_timeouts(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    alloc_file: Option<&Path>,
) -> Result<Target, String> {
    passthrough(pin, dir, upstream, alloc_file, true)
}

fn passthrough(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    alloc_file: Option<&Path>,
    timeouts: bool,
) -> Result<Target, String> {
    let port = free_port();
    let mut cmd = pin.command(PROXY_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "passthrough")
        .env("TETHER_BENCH_LISTEN", addr(port).to_string())
        .env("TETHER_BENCH_UPSTREAM", upstream.to_string());
    if let Some(f) = alloc_file {
        cmd.env("TETHER_BENCH_ALLOC_FILE", f);
    }
    let (name, log) = if timeouts {
        cmd.env("TETHER_BENCH_PASS_TIMEOUTS", "1");
        (
            "plain Pingora pass-through, tether's upstream timeouts",
            dir.join("passthrough-timeouts.log"),
        )
    } else {
        ("plain Pingora pass-through", dir.join("passthrough.log"))
    };
    let mut p = spawn("plain Pingora", cmd, &log);
    wait_ready(&mut p, addr(port), None, &log)?;
    Ok(Target {
        name,
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

/// Writes a tether proxy config (the shipped one, edited) with its own key
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
    // The shipped config with the bench's keys; keys not set here are
    // removed so their defaults apply.
    let mut c = Conf::proxy("eu").expect("shipped eu config");
    c.retain("server", &[])
        .set("server", "id", SERVER_ID)
        .set("server", "region", "eu")
        .set("server", "public_url", format!("http://127.0.0.1:{port}"))
        .set("server", "listen", format!("127.0.0.1:{port}"))
        .set("server", "admin_listen", format!("127.0.0.1:{admin_port}"))
        .set("server", "worker_threads", 1i64);
    c.retain("upstream", &["health_path"])
        .set("upstream", "addresses", vec![upstream.to_string()])
        .set("upstream", "health_interval_ms", 1000i64)
        .set("upstream", "connect_timeout_ms", 500i64)
        .set("upstream", "read_timeout_ms", 5000i64);
    c.retain("discovery", &[])
        .set("discovery", "url", format!("http://127.0.0.1:{nobody}"))
        .set("discovery", "cluster_token_file", "cluster.token")
        .set("discovery", "heartbeat_interval_ms", 2000i64)
        .set("discovery", "poll_wait_seconds", 5i64)
        .set("discovery", "min_poll_interval_ms", 1000i64)
        .set("discovery", "implausible_accept_after_seconds", 3i64);
    c.retain("tokens", &[])
        .set("tokens", "issuer", "tether-bench")
        .set("tokens", "audience", "tether-bench")
        .set("tokens", "access_ttl_seconds", 300i64)
        .set("tokens", "refresh_ttl_days", 7i64)
        .set("tokens", "leeway_seconds", 2i64)
        .set("tokens", "keyring_file", keyring_file)
        .set("tokens", "verified_cache_entries", cache_entries as i64);
    c.retain("login", &["upstream_path", "subject"]);
    c.retain("routing", &[])
        .set("routing", "public_prefixes", Vec::<String>::new())
        .set("routing", "foreign_lock", "redirect")
        .set("routing", "probe_timeout_ms", 300i64);
    c.table.remove("limits");
    // `[log]` at its defaults (no access log), and so readable by older
    // builds compared with TETHER_BENCH_COMPARE.
    c.table.remove("log");
    c.write(&dir.join(format!("proxy.{port}.toml")))
        .expect("write proxy config")
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

/// tether (the release binary, HS256) with `[idempotency]` set to these
/// TOML lines (e.g. `enabled = true` and a `store`), pinned to the proxy
/// core: the POST-with-key rows.
pub fn start_tether_idempotent(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    idempotency: &str,
    name: &'static str,
) -> Result<Target, String> {
    let port = free_port();
    let config = write_tether_config_idempotent(dir, port, upstream, idempotency)?;
    let mut cmd = pin.command(PROXY_CORE, Path::new(TETHER));
    cmd.arg("proxy")
        .arg("--config")
        .arg(&config)
        .env("TETHER_LOG", "error");
    let log = dir.join(format!("tether.{port}.log"));
    let mut p = spawn("tether", cmd, &log);
    wait_ready(&mut p, addr(port), Some(&mint(&config)), &log)?;
    Ok(Target {
        name,
        addr: addr(port),
        proc: p,
        bearer: true,
        config: Some(config),
    })
}

/// The HS256 tether config with `[idempotency]` set to these TOML lines.
pub fn write_tether_config_idempotent(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    idempotency: &str,
) -> Result<PathBuf, String> {
    let path = write_tether_config_with(dir, port, upstream, Keys::Hs256);
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut c = Conf::parse("bench proxy config", &text)?;
    c.merge("idempotency", idempotency);
    c.write(&path).map_err(|e| e.to_string())
}

/// tether in this bench process (counting allocator) with `[idempotency]`
/// set to these TOML lines: allocations per POST.
pub fn start_tether_counted_idempotent(
    pin: &Pinning,
    dir: &Path,
    upstream: SocketAddr,
    alloc_file: &Path,
    idempotency: &str,
    name: &'static str,
) -> Target {
    let port = free_port();
    let config = write_tether_config_idempotent(dir, port, upstream, idempotency)
        .unwrap_or_else(|e| panic!("{e}"));
    start_counted(pin, dir, port, config, alloc_file, name)
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
    start_counted(pin, dir, port, config, alloc_file, keys.row())
}

/// The bench binary as `tether-counted` on `port` with `config`, ready.
fn start_counted(
    pin: &Pinning,
    dir: &Path,
    port: u16,
    config: PathBuf,
    alloc_file: &Path,
    name: &'static str,
) -> Target {
    let mut cmd = pin.command(PROXY_CORE, &std::env::current_exe().expect("bench exe"));
    cmd.env(ROLE, "tether-counted")
        .env("TETHER_BENCH_CONFIG", &config)
        .env("TETHER_BENCH_ALLOC_FILE", alloc_file);
    let log = dir.join(format!("tether-counted.{port}.log"));
    let mut p = spawn("tether (counted)", cmd, &log);
    wait_ready(&mut p, addr(port), Some(&mint(&config)), &log).unwrap_or_else(|e| panic!("{e}"));
    Target {
        name,
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
    let path = dir.join("haproxy.cfg");
    let conf = haproxy_jwt_config("", &format!("127.0.0.1:{port}"), upstream);
    if !haproxy_accepts(&haproxy, &path, &conf, "HAProxy + jwt_verify") {
        return Ok(None);
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

/// HAProxy doing tether's work (docs/benchmarks.md, "Method"): the bearer's `alg` must be HS256,
/// `jwt_verify` with [`SECRET`], `exp` against `date`, `use_backend` on the
/// `srv` claim (another server's token gets tether's 503 refresh answer).
/// `global_extra`: lines added to `global`; `bind`: what follows `bind`
/// (an address, and `ssl crt … alpn …` for TLS).
pub fn haproxy_jwt_config(global_extra: &str, bind: &str, upstream: SocketAddr) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4096
{global_extra}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always

frontend bench
    bind {bind}
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
    )
}

/// Writes `conf` to `path` and checks it with `haproxy -c`; on refusal
/// (a build without `jwt_verify` or OpenSSL) or no haproxy at all, prints
/// the `SKIP` line of `label` and returns false.
pub fn haproxy_accepts(haproxy: &Path, path: &Path, conf: &str, label: &str) -> bool {
    std::fs::write(path, conf).expect("write haproxy config");
    match Command::new(haproxy)
        .args(["-c", "-q", "-f"])
        .arg(path)
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "SKIP {label}: this haproxy rejects the config (needs >= 2.5 built with OpenSSL): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("SKIP {label}: cannot run haproxy: {e}");
            false
        }
    }
}
