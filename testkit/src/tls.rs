//! A throwaway TLS set for tests and benches, made by the project's own
//! `scripts/tls-selfsigned.sh` (the script the docs give operators for
//! local use): a CA and a P-256 server certificate for `localhost` and
//! `127.0.0.1`.

use std::path::{Path, PathBuf};

use crate::cluster::Cluster;

/// The files of a set: `ca` for clients, `cert` (the chain) and `key` for
/// the server.
pub struct TlsSet {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSet {
    /// Writes a fresh set into `dir` (created by the script).
    pub fn create(dir: &Path) -> TlsSet {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/tls-selfsigned.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(dir)
            .output()
            .expect("run scripts/tls-selfsigned.sh");
        assert!(
            out.status.success(),
            "scripts/tls-selfsigned.sh failed (it needs openssl): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsSet {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

impl Cluster {
    /// A fresh [`TlsSet`] in the cluster folder `name`.
    pub fn tls_set(&self, name: &str) -> TlsSet {
        TlsSet::create(&self.path(name))
    }
}
