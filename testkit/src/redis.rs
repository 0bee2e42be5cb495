//! The Redis role: a private `redis-server` child for the idempotency
//! store (docs/idempotency.md), never the system service.
//!
//! Each [`Redis`] listens on 127.0.0.1 on an ephemeral port, works in its
//! own temp folder, keeps nothing on disk (`--save "" --appendonly no`),
//! logs to a file the kit prints when a test fails, and is SIGKILLed and
//! reaped on drop (it is a [`Proc`]). [`Redis::kill`] and
//! [`Redis::restart`] stand for an outage and its end, on the same port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::proc::{Proc, Spawn};

/// Where Debian's `redis-server` package installs the server;
/// `$TETHER_REDIS_SERVER` overrides it.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A running (or deliberately killed) private `redis-server`.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The `redis-server` binary the kit starts.
pub fn redis_server_bin() -> PathBuf {
    std::env::var_os("TETHER_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REDIS_SERVER))
}

/// Whether a `redis-server` binary is there to start.
pub fn available() -> bool {
    redis_server_bin().is_file()
}

impl Redis {
    /// Starts a server on a free port and waits until it answers `PING`.
    /// Panics (naming the package) when `redis-server` is missing.
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temp folder for redis-server");
        let mut r = Redis {
            proc: Proc::empty(),
            port: free_port(),
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let bin = redis_server_bin();
        assert!(
            bin.is_file(),
            "{} is missing: install Debian's redis-server package \
             (scripts/install-deps.sh does), or set TETHER_REDIS_SERVER",
            bin.display()
        );
        let dir = self.dir.path().display().to_string();
        let started = Spawn::new("redis-server", &bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &dir])
            .args(["--logfile", ""])
            .args(["--daemonize", "no"])
            .log(&self.log_path())
            .ready("Ready to accept connections")
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        self.proc = started.proc;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer PING; its log:\n{}",
                self.port,
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The folder the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:<port>/0`, for `[idempotency.store] url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether the server answers `PING` now.
    pub fn pings(&self) -> bool {
        let Ok(mut s) =
            TcpStream::connect_timeout(&crate::net::addr(self.port), Duration::from_millis(500))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL, reaped): an outage. Its data is gone.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.spawn();
    }
}
