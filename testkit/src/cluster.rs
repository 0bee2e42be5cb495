//! A test cluster: a temp folder with fresh secrets (`tether keygen`), one
//! discovery process and any number of proxies started from it. This file
//! holds only what they share; the roles add their own `impl Cluster`
//! blocks (`discovery.rs`, `proxy.rs`), so nothing here imports them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use std::net::SocketAddr;

use crate::proc::{tether_bin, Proc};

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

/// A running discovery process of a [`Cluster`] (started by the methods in
/// `discovery.rs`).
pub struct Discovery {
    pub proc: Proc,
    pub url: String,
    pub addr: SocketAddr,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub timing: Timing,
    /// The `tether` binary every process of this cluster runs.
    pub bin: PathBuf,
    /// Extra TOML lines for the `[discovery]` table of discovery's config.
    pub discovery_extra: String,
    /// etcd client URLs: when set, discovery runs with `[store] kind =
    /// "etcd"` over them (an [`crate::Etcd`] the test owns); else in memory.
    pub etcd_endpoints: Option<Vec<String>>,
    pub discovery: Option<Discovery>,
    pub http: reqwest::Client,
}

impl Cluster {
    /// A cluster running [`tether_bin`].
    pub fn new(timing: Timing) -> Cluster {
        Cluster::with_bin(tether_bin(), timing)
    }

    pub fn with_bin(bin: PathBuf, timing: Timing) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(&bin)
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
            bin,
            discovery_extra: String::new(),
            etcd_endpoints: None,
            discovery: None,
            http,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn secret(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file))
            .expect("token")
            .trim()
            .to_owned()
    }

    pub fn cluster_token(&self) -> String {
        self.secret("cluster.token")
    }

    pub fn admin_token(&self) -> String {
        self.secret("admin.token")
    }
}
