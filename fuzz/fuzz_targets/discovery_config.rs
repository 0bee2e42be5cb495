//! Discovery config text through `tether_discovery::config::parse_with_env`
//! (a fixed environment, so runs are reproducible): never panics; an
//! accepted config keeps its documented invariants.
//!
//! Token files resolve against the config's folder: one temp folder with
//! two valid token files is created once per process. Inputs naming device
//! or procfs paths are skipped (see proxy_config.rs).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether_discovery::config::{parse_with_env, MIN_TOKEN_LEN};

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("tether-fuzz-discovery-config");
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("cluster.token"), "fuzz-cluster-token-0123456789\n")
            .expect("token");
        std::fs::write(dir.join("admin.token"), "fuzz-admin-token-0123456789\n").expect("token");
        dir.join("discovery.toml")
    })
}

fn env(name: &str) -> Option<String> {
    match name {
        "CLUSTER" => Some("env-cluster-token-0123456789".into()),
        "ADMIN" => Some("env-admin-token-0123456789".into()),
        "SHORT" => Some("short".into()),
        "SPACE" => Some("has a space in the token value".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "/run", "\\\\"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let Ok(cfg) = parse_with_env(text, config_path(), &env) else {
        return;
    };
    assert!(
        cfg.ttl >= cfg.heartbeat_interval,
        "ttl {:?} < interval {:?}",
        cfg.ttl,
        cfg.heartbeat_interval
    );
    assert!((1..=256).contains(&cfg.worker_threads));
    assert!((1024..=16 * 1024 * 1024).contains(&cfg.max_body_bytes));
    assert!(
        cfg.cluster_token.expose().len() >= MIN_TOKEN_LEN
            && cfg.admin_token.expose().len() >= MIN_TOKEN_LEN
    );
    assert_ne!(cfg.cluster_token.expose(), cfg.admin_token.expose());
    assert!(!cfg.cluster_token.expose().chars().any(char::is_whitespace));
});
