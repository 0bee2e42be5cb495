//! `tether check`: every shipped config passes; broken ones fail naming
//! the key, the value and what is allowed, with a non-zero exit.

mod common;

use std::path::Path;
use std::process::Command;

use common::TETHER;

/// Copies `conf/*.toml` into a temp dir with fresh secrets beside them.
fn shipped_conf() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    for entry in std::fs::read_dir(&conf).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let out = Command::new(TETHER)
        .args(["keygen", "--dir"])
        .arg(dir.path().join("secrets"))
        .output()
        .unwrap();
    assert!(out.status.success());
    dir
}

fn check(path: &Path) -> (bool, String) {
    let out = Command::new(TETHER)
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_shipped_config_passes() {
    let dir = shipped_conf();
    let mut n = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (ok, out) = check(&p);
            assert!(ok, "{}: {out}", p.display());
            assert!(out.contains(": ok ("), "{out}");
            n += 1;
        }
    }
    assert!(n >= 4, "expected discovery + three proxies, found {n}");
}

/// The commented `[idempotency]` example of the shipped proxy configs,
/// switched on (both stores), passes `tether check`.
#[test]
fn the_idempotency_example_passes_when_uncommented() {
    let dir = shipped_conf();
    let eu = std::fs::read_to_string(dir.path().join("proxy.eu.toml")).unwrap();
    let start = eu
        .find("# [idempotency]\n")
        .expect("example in proxy.eu.toml");
    let (head, rest) = eu.split_at(start);
    // The example runs to the next blank line (other examples follow).
    let (example, tail) = rest.split_at(rest.find("\n\n").map_or(rest.len(), |i| i + 1));
    // `# key = ...` lines are the memory example; `# # key = ...` lines
    // the Redis variant; other `# # ` lines are prose.
    let uncomment = |l: &str, variant: bool| -> String {
        match l.strip_prefix("# # ") {
            Some(rest) if variant && rest.contains(" = ") => rest.to_owned(),
            _ => l.strip_prefix("# ").unwrap_or(l).to_owned(),
        }
    };
    let memory: String = example
        .lines()
        .map(|l| uncomment(l, false) + "\n")
        .collect();
    let redis: String = example
        .lines()
        .filter(|l| !l.starts_with("# kind") && !l.starts_with("# max_"))
        .map(|l| uncomment(l, true) + "\n")
        .collect();
    for (name, example) in [("memory", memory), ("redis", redis)] {
        let p = dir.path().join(format!("idem-{name}.toml"));
        std::fs::write(&p, format!("{head}{example}{tail}")).unwrap();
        let (ok, out) = check(&p);
        assert!(ok, "{name}: {out}");
    }
}

#[test]
fn broken_configs_fail_naming_the_key() {
    let dir = shipped_conf();
    let eu = std::fs::read_to_string(dir.path().join("proxy.eu.toml")).unwrap();
    let disc = std::fs::read_to_string(dir.path().join("discovery.toml")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "access ttl",
            eu.replace("access_ttl_seconds = 120", "access_ttl_seconds = 3600"),
            "tokens.access_ttl_seconds = 3600",
        ),
        (
            "refresh ttl",
            eu.replace("refresh_ttl_days = 14", "refresh_ttl_days = 90"),
            "tokens.refresh_ttl_days = 90",
        ),
        (
            "foreign lock",
            eu.replace("foreign_lock = \"redirect\"", "foreign_lock = \"bounce\""),
            "routing.foreign_lock",
        ),
        (
            "listen",
            eu.replace("listen = \"127.0.0.1:8081\"", "listen = \"nowhere\""),
            "server.listen",
        ),
        (
            "unknown key",
            eu.replace("[upstream]", "[upstream]\nretries = 3"),
            "retries",
        ),
        (
            "missing keyring",
            eu.replace("secrets/keyring.toml", "secrets/nope.toml"),
            "tokens.keyring_file",
        ),
        (
            "idempotency ttl",
            format!("{eu}\n[idempotency]\nenabled = true\nttl_seconds = 0\n"),
            "idempotency.ttl_seconds = 0",
        ),
        (
            "idempotency store",
            format!("{eu}\n[idempotency.store]\nkind = \"redis\"\n"),
            "idempotency.store.url",
        ),
        (
            "discovery ttl",
            disc.replace("ttl_ms = 6000", "ttl_ms = 10"),
            "ttl_ms",
        ),
        (
            "neither kind",
            "[something]\nx = 1\n".to_owned(),
            "cannot tell",
        ),
        ("not toml", "[server\n".to_owned(), "not valid TOML"),
    ];
    for (name, text, needle) in cases {
        let p = dir
            .path()
            .join(format!("broken-{}.toml", name.replace(' ', "-")));
        std::fs::write(&p, text).unwrap();
        let (ok, out) = check(&p);
        assert!(!ok, "{name}: should fail");
        assert!(
            out.contains(needle),
            "{name}: {out:?} should contain {needle:?}"
        );
        assert!(
            out.contains("broken-"),
            "{name}: error names the file: {out}"
        );
    }
}

#[test]
fn token_mint_and_inspect_round_trip() {
    let dir = shipped_conf();
    let cfg = dir.path().join("proxy.eu.toml");
    let out = Command::new(TETHER)
        .args(["token", "mint", "--config"])
        .arg(&cfg)
        .args(["--sub", "alice", "--home", "us"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let access = v["accessToken"].as_str().unwrap();
    let out = Command::new(TETHER)
        .args(["token", "inspect", access, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("\"srv\": \"eu-1\"")
            && text.contains("\"home\": \"us\"")
            && text.contains("verified: ok"),
        "{text}"
    );
    // Verified with another cluster's keys: refused.
    let other = shipped_conf();
    let out = Command::new(TETHER)
        .args(["token", "inspect", access, "--config"])
        .arg(other.path().join("proxy.eu.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature is invalid"));
}
