//! The kit's own checks: processes are reaped with their children, the
//! recording upstream keeps raw bytes, configs are edited key by key.

use std::time::Duration;

use tether_testkit::conf::Conf;
use tether_testkit::{eventually_blocking, group_members, RecordingUpstream, Spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn a_dropped_proc_leaves_nothing_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sh.log");
    let started = Spawn::new("sh", "sh")
        .args(["-c", "sleep 30 & echo ready; sleep 30"])
        .own_process_group()
        .log(&log)
        .ready("ready")
        .start()
        .unwrap();
    let group = started.proc.pid();
    eventually_blocking(Duration::from_secs(5), "shell and sleeps", || {
        group_members(group).len() >= 3
    });
    drop(started);
    // The group was sent SIGKILL and its leader reaped; the background
    // sleep, reparented to init, is gone once init has reaped it too.
    eventually_blocking(Duration::from_secs(3), "the group is empty", || {
        group_members(group).is_empty()
    });
    assert_eq!(group_members(group), Vec::new());
    assert!(std::fs::read_to_string(&log).unwrap().contains("ready"));
}

#[test]
fn a_missing_ready_line_is_an_error_naming_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let err = Spawn::new("sh", "sh")
        .args(["-c", "echo something else; echo oops >&2"])
        .log(&dir.path().join("sh.log"))
        .ready("never printed")
        .ready_within(Duration::from_secs(2))
        .start()
        .err()
        .expect("no ready line");
    assert!(err.0.contains("oops"), "{err}");
}

#[tokio::test]
async fn the_recording_upstream_keeps_raw_bytes() {
    let up = RecordingUpstream::start().await;
    let mut s = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let first =
        b"POST /a HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nx-dup: 2\r\nContent-Length: 5\r\n\r\nhello";
    let second =
        b"GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    s.write_all(first).await.unwrap();
    s.write_all(second).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.windows(8).filter(|w| w == b"recorded").count() < 2 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].raw, first);
    assert_eq!(reqs[0].body(), b"hello");
    assert_eq!(reqs[0].header_values("x-dup"), ["1", "2"]);
    assert_eq!(reqs[1].raw, second);
    assert_eq!(reqs[1].target(), "/b");
}

#[test]
fn shipped_configs_are_edited_key_by_key() {
    let mut c = Conf::proxy("us").unwrap();
    assert_eq!(c.get_str("server", "id"), Some("us-1"));
    c.set("server", "id", "us-9")
        .retain("limits", &["max_connections"])
        .merge(
            "routing",
            "foreign_lock = \"forward\"\nprobe_timeout_ms = 5",
        )
        .remove("tokens", "issuer");
    let text = c.to_text();
    let back = Conf::parse("edited", &text).unwrap();
    assert_eq!(back.get_str("server", "id"), Some("us-9"));
    assert_eq!(back.get_str("routing", "foreign_lock"), Some("forward"));
    assert_eq!(back.get_str("tokens", "issuer"), None);
    assert_eq!(back.table["limits"].as_table().unwrap().len(), 1);
    assert!(Conf::proxy("mars").is_none());
}
