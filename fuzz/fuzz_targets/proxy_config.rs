//! Proxy config text through `tether_proxy::config::parse`: never panics;
//! an accepted config has every value inside its documented range.
//!
//! Relative secret paths resolve against the config's folder, so one temp
//! folder holding a valid `keyring.toml` and `cluster.token` is created
//! once per process (a `OnceLock`; a fixed folder under the temp dir, rewritten
//! with the same content, so repeated runs leave nothing new behind); the fuzzer never writes files. Inputs
//! naming device or procfs paths are skipped: reading `/dev/zero` as a key
//! ring would never end, which is an operator's choice, not a bug.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tether_proxy::config::{parse, ACCESS_TTL_RANGE, MAX_LEEWAY, REFRESH_TTL_RANGE};

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("tether-fuzz-proxy-config");
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("keyring.toml"),
            "signing_kid = \"k1\"\n[[keys]]\nkid = \"k1\"\nalg = \"HS256\"\n\
             secret_hex = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"\n",
        )
        .expect("key ring");
        std::fs::write(dir.join("cluster.token"), "fuzz-cluster-token-0123456789\n")
            .expect("token");
        dir.join("proxy.toml")
    })
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
    let Ok(cfg) = parse(text, config_path()) else {
        return;
    };
    let ttl = cfg.tokens.access_ttl.as_secs();
    assert!(
        (ACCESS_TTL_RANGE.0..=ACCESS_TTL_RANGE.1).contains(&ttl),
        "access ttl {ttl}"
    );
    let days = cfg.tokens.refresh_ttl.as_secs() / 86_400;
    assert!(
        (REFRESH_TTL_RANGE.0..=REFRESH_TTL_RANGE.1).contains(&days),
        "refresh ttl {days} d"
    );
    assert!(cfg.tokens.leeway.as_secs() <= MAX_LEEWAY);
    assert!(!cfg.upstream.addresses.is_empty());
    assert!(cfg.discovery.cluster_token.len() >= 16);
    assert!(tether_protocol::validate::server_id("id", &cfg.server.id).is_ok());
    assert!(cfg
        .routing
        .public_prefixes
        .iter()
        .all(|p| p.starts_with('/') && !p.starts_with("/auth/")));
});
