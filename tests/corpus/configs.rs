//! The corpus class: Configs through `tether check`: a non-zero exit naming the key.

use super::*;

pub(super) fn tether_check(path: &Path) -> (bool, String) {
    let out = Command::new(TETHER)
        .arg("check")
        .arg(path)
        .output()
        .expect("tether check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub(super) fn configs_through_check() -> usize {
    // Cluster::new writes fresh secrets (key ring, tokens) into its folder.
    let c = Cluster::new(Timing::default());
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let proxy = std::fs::read_to_string(conf.join("proxy.eu.toml"))
        .expect("proxy.eu.toml")
        .replace("secrets/", "");
    let disc = std::fs::read_to_string(conf.join("discovery.toml"))
        .expect("discovery.toml")
        .replace("secrets/", "");
    let keyring = std::fs::read_to_string(c.path("keyring.toml")).expect("key ring");
    for (name, text) in [("proxy-ok.toml", &proxy), ("discovery-ok.toml", &disc)] {
        std::fs::write(c.path(name), text).expect("write");
        let (ok, out) = tether_check(&c.path(name));
        assert!(ok, "the base config {name} must pass: {out}");
    }
    let secret_line = keyring
        .lines()
        .find(|l| l.starts_with("secret_hex"))
        .expect("secret_hex")
        .to_owned();
    let ring = |edit: &dyn Fn(&str) -> String| edit(&keyring);
    let with_ring = |file: &str, text: String| {
        std::fs::write(c.path(file), text).expect("write key ring");
        proxy.replace(
            "keyring_file = \"keyring.toml\"",
            &format!("keyring_file = \"{file}\""),
        )
    };
    let r = |from: &str, to: &str| proxy.replace(from, to);
    let d = |from: &str, to: &str| disc.replace(from, to);
    // (name, config text, text the error must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "access ttl i64::MAX",
            r(
                "access_ttl_seconds = 120",
                "access_ttl_seconds = 9223372036854775807",
            ),
            "tokens.access_ttl_seconds",
        ),
        (
            "access ttl beyond i64",
            r(
                "access_ttl_seconds = 120",
                "access_ttl_seconds = 99999999999999999999",
            ),
            "access_ttl_seconds",
        ),
        (
            "negative duration as a string",
            r("health_interval_ms = 1000", "health_interval_ms = \"-5\""),
            "health_interval_ms",
        ),
        (
            "negative duration",
            r("read_timeout_ms = 30000", "read_timeout_ms = -1"),
            "read_timeout_ms",
        ),
        (
            "float duration",
            r("connect_timeout_ms = 1000", "connect_timeout_ms = 1e400"),
            "connect_timeout_ms",
        ),
        (
            "leeway 31 s",
            r("leeway_seconds = 10", "leeway_seconds = 31"),
            "tokens.leeway_seconds",
        ),
        ("unknown table", format!("{proxy}\n[evil]\nx = 1\n"), "evil"),
        (
            "public prefix /auth/",
            r(
                "public_prefixes = [\"/public/\"]",
                "public_prefixes = [\"/auth/\"]",
            ),
            "routing.public_prefixes",
        ),
        (
            "public_url with credentials",
            r(
                "public_url = \"http://127.0.0.1:8081\"",
                "public_url = \"http://u:p@127.0.0.1:8081\"",
            ),
            "server.public_url",
        ),
        (
            "server id with a slash",
            r("id = \"eu-1\"", "id = \"eu/1\""),
            "server.id",
        ),
        (
            "key ring file traversal to a non-ring",
            r(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"../../../../etc/hostname\"",
            ),
            "tokens.keyring_file",
        ),
        (
            "key ring with a 16-byte secret",
            with_ring(
                "ring-short.toml",
                ring(&|k| {
                    k.replace(
                        &secret_line,
                        &format!("secret_hex = \"{}\"", "ab".repeat(16)),
                    )
                }),
            ),
            "32",
        ),
        (
            "key ring alg none",
            with_ring(
                "ring-none.toml",
                ring(&|k| k.replace("alg = \"HS256\"", "alg = \"none\"")),
            ),
            "alg",
        ),
        (
            "key ring alg HS384",
            with_ring(
                "ring-hs384.toml",
                ring(&|k| k.replace("alg = \"HS256\"", "alg = \"HS384\"")),
            ),
            "alg",
        ),
        (
            "key ring kid traversal",
            with_ring(
                "ring-kid.toml",
                ring(&|k| {
                    k.replace("kid = \"k1\"", "kid = \"../k1\"")
                        .replace("signing_kid = \"k1\"", "signing_kid = \"../k1\"")
                }),
            ),
            "kid",
        ),
        (
            "key ring signing kid missing",
            with_ring(
                "ring-signing.toml",
                ring(&|k| k.replace("signing_kid = \"k1\"", "signing_kid = \"k9\"")),
            ),
            "signing_kid",
        ),
        (
            "discovery max body beyond i64",
            d(
                "max_body_bytes = 65536",
                "max_body_bytes = 99999999999999999999",
            ),
            "max_body_bytes",
        ),
        (
            "discovery ttl as a negative string",
            d("ttl_ms = 6000", "ttl_ms = \"-6000\""),
            "ttl_ms",
        ),
        (
            "discovery unknown table",
            format!("{disc}\n[discovery.extra]\nx = 1\n"),
            "extra",
        ),
        (
            "discovery huge worker count",
            d("worker_threads = 1", "worker_threads = 4294967296"),
            "worker_threads",
        ),
    ];
    for (i, (name, text, needle)) in cases.iter().enumerate() {
        let p = c.path(&format!("hostile-{i}.toml"));
        std::fs::write(&p, text).expect("write config");
        let (ok, out) = tether_check(&p);
        assert!(!ok, "[config: {name}] was accepted: {out}");
        assert!(
            out.contains(needle),
            "[config: {name}] error should name {needle:?}: {out}"
        );
        assert!(
            out.contains(&format!("hostile-{i}.toml")),
            "[config: {name}] error names the file: {out}"
        );
    }
    cases.len()
}
