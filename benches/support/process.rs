//! Processes of a bench run: where programs are, pinning to cores, starting
//! them (the test kit's `Spawn`/`Proc`: killed with their children on drop)
//! and waiting until they answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_testkit::{Proc, Spawn};

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

/// Starts `cmd` (stdout and stderr to `log`) as `name`.
pub fn spawn(name: &str, cmd: Command, log: &Path) -> Proc {
    Spawn::command(name, cmd)
        .log(log)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
        .proc
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
        if let Some(status) = proc.try_status() {
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
