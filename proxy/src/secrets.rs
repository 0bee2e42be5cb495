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

/// The text of a key ring with one fresh Ed25519 key named `kid`.
pub fn keyring_text_eddsa(kid: &str) -> String {
    let seed: [u8; 32] = rand::random();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    format!(
        "# tether key ring: one key signs, every key verifies.\n\
         # EdDSA (Ed25519): proxies that only verify need public_key_hex alone;\n\
         # public keys are served at /.well-known/jwks.json.\n\
         signing_kid = \"{kid}\"\n\n[[keys]]\nkid = \"{kid}\"\nalg = \"EdDSA\"\nprivate_key_hex = \"{}\"\npublic_key_hex = \"{}\"\n",
        crate::tokens::hex(&seed),
        crate::tokens::hex(&public)
    )
}

/// Which algorithm `generate` makes the key ring for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Hs256,
    EdDsa,
}

/// Writes the three secret files; refuses to overwrite existing ones
/// unless `force`. Returns the paths written.
pub fn generate(dir: &Path, force: bool) -> std::io::Result<Vec<PathBuf>> {
    generate_with(dir, force, KeyAlg::Hs256)
}

pub fn generate_with(dir: &Path, force: bool, alg: KeyAlg) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let ring = match alg {
        KeyAlg::Hs256 => keyring_text("k1"),
        KeyAlg::EdDsa => keyring_text_eddsa("k1"),
    };
    let files = [
        ("keyring.toml", ring),
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
