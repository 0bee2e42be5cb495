//! The demo scenario end to end, with small numbers: the real `tether
//! demo` binary starting real discovery and proxy processes.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::{group_members, TETHER};

/// The demos run one at a time: each loads the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tether demo` as the leader of a process group of its own (its
/// children inherit the group), and returns its JSON report and its
/// process group id.
fn demo(extra: &[&str]) -> (serde_json::Value, u32) {
    let child = Command::new(TETHER)
        .args(["demo", "--json", "--clients", "12", "--phase-seconds", "5"])
        .args(extra)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tether demo");
    let group = child.id();
    let out = child.wait_with_output().expect("run tether demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "demo --json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("{stderr}");
    (v, group)
}

fn phase(v: &serde_json::Value, i: usize) -> &serde_json::Value {
    &v["phases"][i]
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Nothing the demo started is still running: its process group (the
/// demo's own children and theirs; nothing else on the machine) is empty.
fn assert_nothing_left_running(group: u32) {
    let left = group_members(group);
    assert!(
        left.is_empty(),
        "processes of the demo are still running: {left:?}"
    );
}

#[test]
fn demo_shows_the_failure_and_the_cure() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (v, group) = demo(&[]);
    assert_eq!(v["phases"].as_array().unwrap().len(), 3);
    let (p1, p2, p3) = (phase(&v, 0), phase(&v, 1), phase(&v, 2));

    // Phase 1: the replication lag is real, geo routing alone fails.
    assert!(n(p1, "workflows") > 20, "{p1}");
    assert!(
        n(p1, "failed") > 0,
        "geo routing alone should fail some workflows: {p1}"
    );

    // Phase 2: through tether nothing fails.
    assert!(n(p2, "workflows") > 20, "{p2}");
    assert_eq!(n(p2, "failed"), 0, "{p2}");
    assert_eq!(n(p2, "restarted"), 0, "{p2}");

    // Phase 3: a proxy dies; nothing fails, nothing is lost.
    assert_eq!(n(p3, "failed"), 0, "{p3}");
    let affected = n(p3, "affectedClients");
    assert!(affected > 0, "the killed server had clients: {p3}");
    assert_eq!(
        n(p3, "clientsMoved"),
        affected,
        "every affected client moved: {p3}"
    );
    // Each affected client either finished on its old server before the
    // kill or restarted its workflow on the new one.
    assert!(n(p3, "restarted") <= affected * 2, "{p3}");
    assert!(
        p3["relocks"]["server_down"].as_u64().unwrap_or(0) >= affected,
        "{p3}"
    );
    let recovery = p3["recoverySeconds"]
        .as_f64()
        .expect("every affected client recovered");
    assert!(recovery <= 3.0, "fast failover recovery {recovery} s");
    assert!(v["staleEventsIgnored"].as_u64().is_some());
    // Idempotency-Key replays are reported per phase; a clean phase 2
    // resends nothing the app had applied (each call has its own key).
    assert_eq!(n(p2, "replayed"), 0, "{p2}");
    assert!(p3["replayed"].as_u64().is_some(), "{p3}");
    assert_nothing_left_running(group);
}

#[test]
fn without_fast_failover_recovery_waits_for_eviction() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (ttl_ms, heartbeat_ms, wait_ms) = (1500u64, 300u64, 1000u64);
    let (v, group) = demo(&[
        "--no-fast-failover",
        "--ttl-ms",
        &ttl_ms.to_string(),
        "--heartbeat-ms",
        &heartbeat_ms.to_string(),
        "--reconnect-wait-ms",
        &wait_ms.to_string(),
    ]);
    let p3 = phase(&v, 2);
    assert_eq!(v["fastFailover"], false);
    assert_eq!(n(p3, "failed"), 0, "{p3}");
    let recovery = p3["recoverySeconds"]
        .as_f64()
        .expect("every affected client recovered");
    // The TTL, one poll interval (the proxies long-poll, so a change
    // arrives at once; 50 ms minimum between fetches) and the client's
    // reconnect wait, plus slack for a loaded machine.
    let bound = (ttl_ms + 50 + wait_ms) as f64 / 1000.0 + 1.5;
    assert!(recovery <= bound, "recovery {recovery} s > {bound} s");
    // It really did wait for eviction: no faster than the TTL allows,
    // less the heartbeat that may have been sent just before the kill.
    assert!(
        recovery >= (ttl_ms - heartbeat_ms) as f64 / 1000.0 - 0.1,
        "recovery {recovery} s is faster than eviction"
    );
    assert_nothing_left_running(group);
}
