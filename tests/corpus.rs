//! The bad-input corpus (issue 6, item 5): a table of hostile inputs, each
//! sent to the real `tether` process that faces it, each asserting the
//! documented 4xx, that nothing reached an upstream, that no state changed
//! and that nothing answered with a 5xx.
//!
//! Four classes, each on its own processes so their state checks cannot
//! disturb one another; one test per class (they run concurrently), and
//! the last to finish prints the corpus size:
//! - tokens and `Authorization` headers at a proxy (401 +
//!   `WWW-Authenticate`; a well-formed unknown `srv` is the one 503);
//! - bodies at a proxy's `/auth/refresh` (400 naming the field, 401, 413);
//! - heartbeats at discovery (400 naming the field, 401, 409, 413; the
//!   registry's version and servers unchanged after every case);
//! - configs through `tether check` (non-zero exit naming the key).
//!
//! Inputs that exposed a bug are kept as regression tests (the last
//! section), asserting the correct behaviour.
//! docs/security-testing.md describes the corpus and the fuzz targets.

mod common;
// One file per input class (tests/corpus/), each with its case table.
#[path = "corpus/configs.rs"]
mod configs;
#[path = "corpus/edge.rs"]
mod edge;
#[path = "corpus/heartbeats.rs"]
mod heartbeats;
#[path = "corpus/refresh.rs"]
mod refresh;
#[path = "corpus/tokens.rs"]
mod tokens;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use common::*;
use heartbeats::registry_state;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Ed25519 key pair of RFC 8032 §7.1, test 1: a real EdDSA signer for the
/// "EdDSA token" and "HS/EdDSA key confusion" cases.
const ED_SEED: [u8; 32] = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
const ED_PUBLIC: [u8; 32] =
    hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");

const fn hex32(s: &str) -> [u8; 32] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nib(b[2 * i]) << 4) | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// The Ed25519 public key as PEM text (what a JWKS or a key file would
/// publish): the secret an attacker tries in an HS/EdDSA confusion attack.
fn ed_public_pem() -> String {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(&ED_PUBLIC);
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
}

fn ed_signing_key() -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&ED_SEED);
    EncodingKey::from_ed_der(&der)
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// `b64(header).b64(payload).signature` with `alg` under `key`; header and
/// payload are raw bytes so they can be anything (not JSON, a NUL, …).
fn signed_raw(header: &[u8], payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("sign");
    format!("{message}.{sig}")
}

/// Forges tokens with the cluster's own key ring secret, so each case
/// differs from an accepted token in exactly the way it names.
struct Forge {
    key: EncodingKey,
    now: u64,
}

impl Forge {
    fn header(&self, edit: impl FnOnce(&mut Value)) -> Value {
        let mut h = json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"});
        edit(&mut h);
        h
    }

    fn access_claims(&self, edit: impl FnOnce(&mut Value)) -> Value {
        let now = self.now;
        let mut v = json!({"iss": "tether-test", "aud": "tether-tests", "sub": "alice", "iat": now, "nbf": now,
            "exp": now + 100, "jti": "j", "srv": "eu-1", "rgn": "eu", "fam": "f"});
        edit(&mut v);
        v
    }

    fn refresh_claims(&self, edit: impl FnOnce(&mut Value)) -> Value {
        let now = self.now;
        let mut v = json!({"iss": "tether-test", "aud": "tether-tests", "sub": "alice", "iat": now,
            "exp": now + 86_400, "jti": "j", "fam": "f", "srv": "eu-1"});
        edit(&mut v);
        v
    }

    /// An access token: HS256 with the ring's key, claims edited.
    fn access(&self, edit: impl FnOnce(&mut Value)) -> String {
        self.sign(&self.header(|_| {}), &self.access_claims(edit))
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        signed_raw(
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            &self.key,
            Algorithm::HS256,
        )
    }

    fn sign_alg(&self, header: &Value, claims: &Value, alg: Algorithm) -> String {
        signed_raw(
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            &self.key,
            alg,
        )
    }
}

/// Reads the HS256 secret of the cluster's key ring.
fn ring_secret(c: &Cluster) -> Vec<u8> {
    let text = std::fs::read_to_string(c.path("keyring.toml")).expect("key ring");
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("secret_hex = \""))
        .expect("secret_hex line")
        .trim_end_matches('"');
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().expect("object").remove(key);
}

/// A status that a client mistake may get: 4xx, or the one documented 503.
fn assert_not_5xx(status: u16, case: &str) {
    assert!(
        status < 500,
        "[{case}] answered {status}: a client mistake must never get a 5xx"
    );
}

// -------------------------------------------------------------------- tests
//
// One test per input class, so a failure names its class. Each adds its
// case count to the tally; the last class to finish prints the corpus size.

/// The classes, in the order the summary line names them.
const CLASSES: [&str; 11] = [
    "tokens and Authorization",
    "refresh bodies",
    "heartbeats",
    "configs",
    "paths",
    "identity headers",
    "forwarding headers",
    "login subjects",
    "token headers",
    "framing",
    "HTTP niceties",
];

/// Case counts per class (as in [`CLASSES`]) and how many classes have
/// finished.
static TALLY: [AtomicUsize; CLASSES.len()] = [const { AtomicUsize::new(0) }; CLASSES.len()];
static FINISHED: AtomicUsize = AtomicUsize::new(0);

/// Each class must finish within this.
const CLASS_WITHIN: Duration = Duration::from_secs(120);

fn tally(class: usize, cases: usize) {
    TALLY[class].store(cases, Ordering::SeqCst);
    if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 < TALLY.len() {
        return;
    }
    let counts: Vec<usize> = TALLY.iter().map(|t| t.load(Ordering::SeqCst)).collect();
    let total: usize = counts.iter().sum();
    let parts: Vec<String> = CLASSES
        .iter()
        .zip(&counts)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!("corpus: {total} cases ({})", parts.join(", "));
    assert!(
        total >= 40,
        "the corpus must hold at least 40 cases, has {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_and_authorization_headers() {
    let cases = tokio::time::timeout(CLASS_WITHIN, tokens::tokens_at_a_proxy())
        .await
        .expect("the token cases finish within 2 minutes");
    tally(0, cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_refresh_bodies() {
    let cases = tokio::time::timeout(CLASS_WITHIN, refresh::refresh_bodies_at_a_proxy())
        .await
        .expect("the refresh cases finish within 2 minutes");
    tally(1, cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heartbeats() {
    let cases = tokio::time::timeout(CLASS_WITHIN, heartbeats::heartbeats_at_discovery())
        .await
        .expect("the heartbeat cases finish within 2 minutes");
    tally(2, cases);
}

#[test]
fn hostile_configs() {
    let start = std::time::Instant::now();
    let cases = configs::configs_through_check();
    assert!(
        start.elapsed() < CLASS_WITHIN,
        "the config cases finish within 2 minutes"
    );
    tally(3, cases);
}

/// Runs one async class within [`CLASS_WITHIN`] and tallies it.
async fn class<F: std::future::Future<Output = usize>>(index: usize, cases: F) {
    let n = tokio::time::timeout(CLASS_WITHIN, cases)
        .await
        .unwrap_or_else(|_| panic!("the {} cases finish within 2 minutes", CLASSES[index]));
    tally(index, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths() {
    class(4, edge::paths()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identity_header_spellings() {
    class(5, edge::identity_headers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_forwarding_headers() {
    class(6, edge::forwarding_headers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_login_subjects() {
    class(7, edge::login_subjects()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_headers() {
    class(8, edge::token_headers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framing() {
    class(9, edge::framing()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_niceties() {
    class(10, edge::niceties()).await;
}

// ------------------------------------------------------- regression tests
//
// Inputs the corpus found that were handled wrongly, fixed in
// protocol/src/validate.rs; docs/security-testing.md tells the story.

/// Was a bug: `parse_json` (protocol/src/validate.rs) lets serde read a JSON
/// array as a struct's fields in declaration order, so
/// `["pos","eu","http://…",1,true]` registers a server and `["<refresh
/// token>"]` refreshes. The contract is a JSON object; anything else is
/// 400 naming `body`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_json_arrays_are_read_as_positional_objects() {
    let mut c = Cluster::new(Timing {
        ttl_ms: 60_000,
        ..Timing::default()
    });
    c.start_discovery(0);
    let before = registry_state(&c).await;
    let r = c
        .http
        .post(format!("{}/v1/heartbeat", c.discovery_url()))
        .bearer_auth(c.cluster_token())
        .header("content-type", "application/json")
        .body(r#"["pos","eu","http://127.0.0.1:9",1,true]"#)
        .send()
        .await
        .expect("heartbeat");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let after = registry_state(&c).await;
    let mut failures = Vec::new();
    if (status, v["field"].as_str()) != (400, Some("body")) || after != before {
        failures.push(format!(
            "heartbeat as a JSON array: {status} {v}; registry now {after:?}"
        ));
    }

    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let l = login(&c.http, &a.url, "alice", None).await;
    let r = c
        .http
        .post(format!("{}/auth/refresh", a.url))
        .header("content-type", "application/json")
        .body(format!("[{:?}]", l.refresh))
        .send()
        .await
        .expect("refresh");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if (status, v["field"].as_str()) != (400, Some("body")) {
        failures.push(format!("refresh body as a JSON array: {status} {v}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Was a bug: `validate::server_url` (protocol/src/validate.rs) checks the URL
/// that `url::Url::parse` makes of the input, but discovery stores and
/// proxies send the raw input. The parser drops tabs and newlines, trims
/// spaces and reads `\` as `/`, so such URLs pass, and a newline then
/// breaks every `Tether-Relock` answer for clients locked to that server:
/// the proxy answers 502 (seen 2026-11-23). A server URL must be refused
/// unless it is exactly its normalised form (or at least has no
/// whitespace, control characters or backslashes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_server_urls_are_stored_unnormalised() {
    let mut c = Cluster::new(Timing {
        ttl_ms: 60_000,
        ..Timing::default()
    });
    c.start_discovery(0);
    let app = Upstream::start("app").await;
    let a = c.proxy("eu-1", "eu").upstream(&app).start().await;
    let f = Forge {
        key: EncodingKey::from_secret(&ring_secret(&c)),
        now: tether_proxy::tokens::unix_now(),
    };
    let urls = [
        ("nl", "http://127.0.0.1:9/a\nb"),
        ("cr", "http://127.0.0.1:9/a\rb"),
        ("tab", "http://127.0.0.1:9/a\tb"),
        ("space", " http://127.0.0.1:9 "),
        ("backslash", "http:\\\\127.0.0.1:9"),
        // Found by the heartbeat_body fuzz target: a space inside.
        ("inner-space", "http://127.0.0.1:9/a b"),
    ];
    let mut failures = Vec::new();
    for (id, url) in urls {
        let r = c
            .http
            .post(format!("{}/v1/heartbeat", c.discovery_url()))
            .bearer_auth(c.cluster_token())
            .json(&json!({"id": id, "region": "eu", "url": url, "load": 0, "healthy": true}))
            .send()
            .await
            .expect("heartbeat");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if (status, v["field"].as_str()) == (400, Some("url")) {
            continue;
        }
        failures.push(format!(
            "discovery accepted url {url:?} for {id}: {status} {v}"
        ));
        // What that does to a proxy: a client locked to that server.
        a.wait_sees(&c.http, &[id]).await;
        let token = f.access(|v| v["srv"] = id.into());
        let r = get(&c.http, &format!("{}/orders/1", a.url), Some(&token)).await;
        let status = r.status().as_u16();
        let relock = r
            .headers()
            .get("tether-relock")
            .map(|h| h.as_bytes().to_vec());
        if status >= 500 {
            failures.push(format!(
                "proxy answered {status} for a client locked to {id}"
            ));
        } else if let Some(h) = relock {
            failures.push(format!(
                "proxy sent Tether-Relock {:?} for {id}",
                String::from_utf8_lossy(&h)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// BUG (minor): the server-id alphabet admits `.` and `..`, which are dot
/// segments in a URL path: `POST /v1/servers/../drain` is normalised by
/// HTTP clients (curl, reqwest, browsers) to `/v1/drain`, so such a server
/// cannot be drained with an ordinary client. Ids made only of dots should
/// be refused (400 naming `id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_dot_segment_server_ids() {
    let mut c = Cluster::new(Timing {
        ttl_ms: 60_000,
        ..Timing::default()
    });
    c.start_discovery(0);
    let mut failures = Vec::new();
    for id in [".", ".."] {
        let r = c
            .http
            .post(format!("{}/v1/heartbeat", c.discovery_url()))
            .bearer_auth(c.cluster_token())
            .json(&json!({"id": id, "region": "eu", "url": "http://127.0.0.1:9", "load": 0, "healthy": true}))
            .send()
            .await
            .expect("heartbeat");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if (status, v["field"].as_str()) != (400, Some("id")) {
            failures.push(format!("id {id:?}: {status} {v}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
