//! `tether keygen`: fresh random secrets for a local cluster.
//!
//! Writes `keyring.toml` (one HS256 key, 256 random bits), `cluster.token`
//! and `admin.token` into a directory, readable by the owner only. The
//! shipped configs in `conf/` point at `conf/secrets/`, which git ignores.

use std::io::Write;
use std::path::{Path, PathBuf};

fn random_hex(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    crate::tokens::hex(&buf)
}

/// The text of a key ring with one fresh HS256 key named `kid`.
pub fn keyring_text(kid: &str) -> String {
    format!(
        "# tether key ring: one key signs, every key verifies.\n\
         # Rotate by adding a key, switching signing_kid, and removing the old\n\
         # key once its tokens have expired (refresh lifetime).\n\
         signing_kid = \"{kid}\"\n\n[[keys]]\nkid = \"{kid}\"\nalg = \"HS256\"\nsecret_hex = \"{}\"\n",
        random_hex(32)
    )
}

/// Writes the three secret files; refuses to overwrite existing ones
/// unless `force`. Returns the paths written.
pub fn generate(dir: &Path, force: bool) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("keyring.toml", keyring_text("k1")),
        ("cluster.token", format!("{}\n", random_hex(32))),
        ("admin.token", format!("{}\n", random_hex(32))),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        if path.exists() && !force {
            continue;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path)?;
        f.write_all(text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
