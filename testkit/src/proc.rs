//! Child processes: started with [`Spawn`], owned by a [`Proc`] that kills
//! and reaps them (and anything they started) when dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How many log lines a failing test prints per process.
const TAIL_LINES: usize = 40;

/// The `tether` binary under test: `$TETHER_BIN` when set, else the one
/// cargo built next to the running test or bench (`target/<profile>/tether`,
/// the parent of the `deps/` folder test executables live in).
pub fn tether_bin() -> PathBuf {
    if let Some(p) =
        std::env::var_os("TETHER_BIN").or_else(|| std::env::var_os("CARGO_BIN_EXE_tether"))
    {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join("tether");
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
    }
    panic!(
        "no tether binary found above {} (build it, or set TETHER_BIN)",
        exe.display()
    )
}

/// Why a process did not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A builder for one child process.
///
/// stdout and stderr go to the log file (appending, so both streams and
/// the ready-line reader share it); with [`Spawn::ready`] the start waits
/// for stdout lines containing a marker and returns what follows it.
pub struct Spawn {
    name: String,
    cmd: Command,
    log: Option<PathBuf>,
    ready: Option<(String, usize)>,
    ready_within: Duration,
    own_group: bool,
    stdin_pipe: bool,
}

/// A started process and the text after each ready marker.
pub struct Started {
    pub proc: Proc,
    pub ready: Vec<String>,
}

impl Started {
    /// The text after the first ready marker.
    pub fn first(&self) -> &str {
        self.ready.first().map_or("", String::as_str)
    }
}

impl Spawn {
    /// `program` run as `name` (used in messages and log banners).
    pub fn new(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Spawn {
        Spawn::command(name, Command::new(program))
    }

    /// `tether <args>` with the binary of [`tether_bin`].
    pub fn tether(name: &str) -> Spawn {
        Spawn::new(name, tether_bin())
    }

    /// An already prepared command (e.g. under `taskset`).
    pub fn command(name: &str, cmd: Command) -> Spawn {
        Spawn {
            name: name.to_owned(),
            cmd,
            log: None,
            ready: None,
            ready_within: Duration::from_secs(20),
            own_group: false,
            stdin_pipe: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Where stdout and stderr go; without it, to the null device.
    pub fn log(mut self, path: &Path) -> Self {
        self.log = Some(path.to_owned());
        self
    }

    /// Waits (see [`Spawn::ready_within`]) for a stdout line containing
    /// `marker`.
    pub fn ready(self, marker: &str) -> Self {
        self.ready_lines(marker, 1)
    }

    /// Waits for `count` stdout lines containing `marker` (e.g. one per
    /// region of the sample app).
    pub fn ready_lines(mut self, marker: &str, count: usize) -> Self {
        self.ready = Some((marker.to_owned(), count));
        self
    }

    pub fn ready_within(mut self, within: Duration) -> Self {
        self.ready_within = within;
        self
    }

    /// The child's stdin is a pipe and `TETHER_EXIT_WITH_PARENT=1` is set:
    /// a `tether` child then exits when this process dies, however it dies.
    pub fn exit_with_parent(mut self) -> Self {
        self.stdin_pipe = true;
        self.cmd.env("TETHER_EXIT_WITH_PARENT", "1");
        self
    }

    /// Starts the child as the leader of a new process group, so that
    /// [`group_members`] finds everything it started.
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// Starts the process; with a ready marker, waits for it.
    pub fn start(mut self) -> Result<Started, StartError> {
        let name = self.name.clone();
        let log_out = match &self.log {
            Some(path) => {
                File::create(path)
                    .map_err(|e| StartError(format!("{name}: log {}: {e}", path.display())))?;
                let open = || OpenOptions::new().append(true).open(path);
                let out = open()
                    .map_err(|e| StartError(format!("{name}: log {}: {e}", path.display())))?;
                Some((out, open().ok()))
            }
            None => None,
        };
        let (stderr, reader_log) = match log_out {
            Some((f, reader)) => (Stdio::from(f), reader),
            None => (Stdio::null(), None),
        };
        self.cmd.stderr(stderr);
        self.cmd.stdin(if self.stdin_pipe {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        self.cmd.stdout(Stdio::piped());
        if self.own_group {
            use std::os::unix::process::CommandExt;
            self.cmd.process_group(0);
        }
        let mut child = self
            .cmd
            .spawn()
            .map_err(|e| StartError(format!("cannot start {name}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let ready = self.ready.clone();
        // Copies stdout into the log, reporting ready lines on the way;
        // it ends with the child's stdout.
        std::thread::spawn(move || {
            let mut log = reader_log;
            let mut wanted = ready.as_ref().map_or(0, |(_, n)| *n);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if wanted > 0 {
                    let (marker, _) = ready.as_ref().expect("wanted > 0");
                    if let Some(i) = line.find(marker.as_str()) {
                        wanted -= 1;
                        // The receiver may have given up; nothing to do then.
                        let _ = tx.send(line[i + marker.len()..].trim().to_owned());
                    }
                }
            }
        });
        let mut proc = Proc {
            name: name.clone(),
            child: Some(child),
            log: self.log.clone(),
        };
        let mut lines = Vec::new();
        if let Some((marker, count)) = &self.ready {
            let deadline = std::time::Instant::now() + self.ready_within;
            while lines.len() < *count {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(rest) => lines.push(rest),
                    Err(_) => {
                        let status = proc.try_status();
                        let log = proc.log_text();
                        proc.kill();
                        return Err(StartError(format!(
                            "{name} did not print {marker:?} within {:?} ({}); its log says:\n{log}",
                            self.ready_within,
                            status.map_or("still running".into(), |s| format!("exited: {s}")),
                        )));
                    }
                }
            }
        }
        Ok(Started { proc, ready: lines })
    }
}

/// A child process, SIGKILLed and reaped on drop together with its
/// descendants. When dropped while the thread panics, it prints the last
/// lines of its log.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: Option<PathBuf>,
}

impl Proc {
    /// A placeholder owning no process.
    pub fn empty() -> Proc {
        Proc {
            name: String::new(),
            child: None,
            log: None,
        }
    }

    /// 0 once killed.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the process and its descendants now (a real process death, as
    /// in production) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Children first, listed while the parent still holds them
            // (nginx's worker outlives a SIGKILLed master).
            let descendants: Vec<u32> = tree(c.id()).into_iter().skip(1).collect();
            let _ = c.kill();
            for pid in descendants {
                let _ = Command::new("kill")
                    .arg("-9")
                    .arg(pid.to_string())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "HUP", "TERM") with `kill(1)`.
    pub fn signal(&self, signal: &str) -> bool {
        let pid = self.pid();
        pid != 0
            && Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The exit status if the process has ended (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `within` for the process to end by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// This process and its descendants.
    pub fn tree(&self) -> Vec<u32> {
        match self.pid() {
            0 => Vec::new(),
            pid => tree(pid),
        }
    }

    /// CPU time (user + system) of the process tree so far.
    pub fn cpu(&self) -> Duration {
        let u = self.usage();
        u.user + u.system
    }

    /// CPU time, split into user and system (kernel), and minor page
    /// faults of the process tree so far: where a cost difference lies.
    pub fn usage(&self) -> Usage {
        let ticks = clock_ticks() as f64;
        let (mut user, mut system, mut faults) = (0, 0, 0);
        for s in self.tree().iter().filter_map(|&p| proc_stat(p)) {
            user += s.utime;
            system += s.stime;
            faults += s.minflt;
        }
        Usage {
            user: Duration::from_secs_f64(user as f64 / ticks),
            system: Duration::from_secs_f64(system as f64 / ticks),
            minor_faults: faults,
        }
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
        self.kill();
        if std::thread::panicking() && self.log.is_some() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(TAIL_LINES).collect();
            eprintln!("----- last log lines of {} -----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

// ------------------------------------------------------------------ /proc

/// What [`Proc::usage`] reads (cumulative; subtract two readings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    pub minor_faults: u64,
}

pub(crate) struct Stat {
    pub ppid: u32,
    pub pgrp: u32,
    pub minflt: u64,
    pub utime: u64,
    pub stime: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, pgrp 5, minflt 10,
    // utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        minflt: f.get(7)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// `pid` and its descendants (by parent pid), parents before children.
pub fn tree(pid: u32) -> Vec<u32> {
    let stats: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| proc_stat(p).map(|s| (p, s.ppid)))
        .collect();
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for &(p, ppid) in &stats {
            if ppid == parent && !pids.contains(&p) {
                pids.push(p);
            }
        }
        i += 1;
    }
    pids
}

/// Live processes in process group `pgid` (not zombies), with their command
/// lines: what is left of a process tree started with
/// [`Spawn::own_process_group`] or `CommandExt::process_group(0)`.
pub fn group_members(pgid: u32) -> Vec<(u32, String)> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|s| s.pgrp == pgid))
        .filter(|&p| {
            // A zombie has no command line and holds no resources.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| t.rfind(')').map(|i| t[i + 2..].starts_with('Z')))
                == Some(false)
        })
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            (p, cmd)
        })
        .collect()
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
