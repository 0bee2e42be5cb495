//! The etcd role: a cluster of 1 or 3 (or any number of) `etcd` members
//! for discovery's etcd store (docs/design.md §6a), each on ephemeral
//! loopback client and peer ports with its own temp data dir. Never the
//! system service: the members are children of the test ([`Proc`]), so
//! they are killed and reaped on drop and their logs are printed when the
//! test fails.
//!
//! ```ignore
//! let mut etcd = Etcd::start(3).await;
//! let endpoints = etcd.endpoints();
//! etcd.kill_member(0);             // one member lost: quorum holds
//! etcd.stop_all();                 // no quorum: discovery degrades
//! etcd.start_all().await;          // quorum back, same data
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::proc::{Proc, Spawn};

/// The etcd binary: `$TETHER_ETCD` when set, else `etcd` on `PATH`
/// (Debian's `etcd-server`, installed by `scripts/install-deps.sh`).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("TETHER_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    proc: Proc,
    /// How many times this member was started (names its log file).
    starts: u32,
}

/// A running etcd cluster owned by a test.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    http: reqwest::Client,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster has a leader.
    pub async fn start(n: usize) -> Etcd {
        assert!(n > 0, "an etcd cluster needs a member");
        let dir = tempfile::Builder::new()
            .prefix("tether-etcd-")
            .tempdir()
            .expect("a temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                proc: Proc::empty(),
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "tether-test-{}-{}",
            std::process::id(),
            dir.path().file_name().expect("a name").to_string_lossy()
        );
        let mut etcd = Etcd {
            dir,
            members,
            initial_cluster,
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_ready().await;
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let data = self.dir.path().join(format!("m{i}.data"));
        let m = &mut self.members[i];
        m.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("etcd-{}.{}.log", m.name, m.starts));
        let started = Spawn::new(&format!("etcd {}", m.name), etcd_bin())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args(["--initial-cluster-state", "new"])
            // Fast elections keep member-loss tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .log(&log)
            .start()
            .unwrap_or_else(|e| panic!("{e} (is etcd-server installed? scripts/install-deps.sh)"));
        m.proc = started.proc;
    }

    /// Every member's client URL (`http://127.0.0.1:PORT`), running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILLs member `i` (a real crash) and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].proc.kill();
    }

    /// Starts member `i` again on its data dir (it rejoins the cluster).
    pub fn restart_member(&mut self, i: usize) {
        assert!(
            !self.members[i].proc.is_running(),
            "etcd member {i} is running"
        );
        self.spawn(i);
    }

    /// Kills every member: the cluster has no quorum and answers nothing.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every stopped member on its data dir and waits for a leader.
    pub async fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].proc.is_running() {
                self.spawn(i);
            }
        }
        self.wait_ready().await;
    }

    /// Whether member `i` answers `/health` with a leader and quorum.
    pub async fn member_healthy(&self, i: usize) -> bool {
        let url = format!("{}/health", self.members[i].client_url);
        match self.http.get(url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["health"] == "true"),
            Err(_) => false,
        }
    }

    /// Waits (30 s at most) until some member reports a healthy cluster.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..self.members.len() {
                if self.member_healthy(i).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within 30 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every member's current log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = m.proc.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!(
                "--- etcd {} ({}) last lines ---\n",
                m.name, m.client_url
            ));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
