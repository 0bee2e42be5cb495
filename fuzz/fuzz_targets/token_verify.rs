//! Token verification on arbitrary input: `Tokens::verify_access`,
//! `with_access` (the request path, through the verified-token cache) and
//! `verify_refresh` with a fixed key ring must never panic, and never
//! accept one token as both kinds.
//!
//! The ring holds an HS256 key `k1` and, when the key ring format supports
//! it, an EdDSA verifying key `ed1` (RFC 8032 test key 1). Three input
//! modes, chosen by the first byte modulo 3:
//! - 0: the rest is the token text (what a client puts after `Bearer `);
//! - 1: the rest is `header JSON \0 payload JSON`, base64url-encoded and
//!   signed with HS256 under `k1`'s secret, so the fuzzer also reaches the
//!   claim checks behind a valid signature (types of `exp`/`nbf`, `typ`,
//!   `kid`, `alg`, missing claims, `srv` shape);
//! - 2: the same, but the HMAC key is the Ed25519 *public* key (raw bytes):
//!   the HS/EdDSA key-confusion attack. Nothing signed this way may ever
//!   verify.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use tether_proxy::tokens::{unix_now, Tokens};

/// A fixed test key (fuzzing only; never used anywhere else).
const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const LEEWAY: u64 = 2;
/// RFC 8032 §7.1 test 1 public key: public, so an attacker knows it.
const ED_PUBLIC_HEX: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("constant hex"))
        .collect()
}

/// The verifier, built the way the proxy builds it: from a config file
/// (parsed by `tether_proxy::config::parse`) and a key ring beside it,
/// written once per process into a fixed folder under the temp dir.
fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = std::env::temp_dir().join("tether-fuzz-token-verify");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hs = format!("signing_kid = \"k1\"\n[[keys]]\nkid = \"k1\"\nalg = \"HS256\"\nsecret_hex = \"{SECRET_HEX}\"\n");
        let ed = format!("{hs}[[keys]]\nkid = \"ed1\"\nalg = \"EdDSA\"\npublic_key_hex = \"{ED_PUBLIC_HEX}\"\n");
        std::fs::write(dir.join("cluster.token"), "fuzz-cluster-token-0123456789\n").expect("token");
        let config = format!(
            r#"[server]
id = "eu-1"
region = "eu"
public_url = "http://127.0.0.1:8081"
listen = "127.0.0.1:8081"
admin_listen = "127.0.0.1:9081"
[upstream]
addresses = ["127.0.0.1:3001"]
[discovery]
url = "http://127.0.0.1:7070"
cluster_token_file = "cluster.token"
[tokens]
issuer = "tether-fuzz"
audience = "tether-fuzz-aud"
leeway_seconds = {LEEWAY}
keyring_file = "keyring.toml"
[login]
upstream_path = "/login"
subject = {{ json_pointer = "/userId" }}
"#
        );
        // With the EdDSA key when the ring format takes it, else HS256 only.
        for ring in [ed, hs] {
            std::fs::write(dir.join("keyring.toml"), ring).expect("key ring");
            if let Ok(cfg) = tether_proxy::config::parse(&config, &dir.join("proxy.toml")) {
                return Tokens::new(&cfg.tokens);
            }
        }
        panic!("the fixed fuzz config does not parse")
    })
}

fn signed(header: &[u8], payload: &[u8], key: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = mode % 3;
    let token = if mode == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let (header, payload) = rest.split_at(split);
        let key = if mode == 1 {
            unhex(SECRET_HEX)
        } else {
            unhex(ED_PUBLIC_HEX)
        };
        signed(header, payload.get(1..).unwrap_or_default(), &key)
    };
    let t = tokens();
    let access = t.verify_access(&token);
    let refresh = t.verify_refresh(&token);
    // The request path (`with_access`, through the verified-token cache)
    // gives the same answer as the full check, on a miss and on a hit.
    for pass in ["miss", "hit"] {
        let fast = t.with_access(&token, |v| (v.sub.to_owned(), v.srv.to_owned(), v.fam.to_owned()));
        match (&access, &fast) {
            (Ok(c), Ok((sub, srv, fam))) => assert_eq!(
                (&c.sub, &c.srv, &c.fam),
                (sub, srv, fam),
                "request path ({pass}) read other claims: {token}"
            ),
            (Err(a), Err(b)) => assert_eq!(a, b, "request path ({pass}) gave another error: {token}"),
            (a, b) => panic!("request path ({pass}) disagrees: full {a:?}, request path {b:?}: {token}"),
        }
    }
    if mode == 2 {
        assert!(
            access.is_err() && refresh.is_err(),
            "key confusion: a token HMAC-signed with the Ed25519 public key verified: {token}"
        );
    }
    assert!(
        !(access.is_ok() && refresh.is_ok()),
        "one token accepted both as access and as refresh token: {token}"
    );
    let now = unix_now();
    if let Ok(c) = &access {
        assert!(
            tether_protocol::validate::server_id("srv", &c.srv).is_ok(),
            "accepted srv {:?}",
            c.srv
        );
        assert!(
            c.exp + LEEWAY + 1 >= now,
            "accepted an expired access token: exp {} now {now}",
            c.exp
        );
        assert!(
            c.nbf <= now + LEEWAY + 1,
            "accepted an access token before nbf {} (now {now})",
            c.nbf
        );
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str()),
            ("tether-fuzz", "tether-fuzz-aud")
        );
    }
    if let Ok(c) = &refresh {
        assert!(
            tether_protocol::validate::server_id("srv", &c.srv).is_ok(),
            "accepted srv {:?}",
            c.srv
        );
        assert!(
            c.exp + LEEWAY + 1 >= now,
            "accepted an expired refresh token"
        );
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str()),
            ("tether-fuzz", "tether-fuzz-aud")
        );
    }
});
