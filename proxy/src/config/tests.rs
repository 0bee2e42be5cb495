use super::*;
use std::path::PathBuf;
use std::time::Duration;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        crate::secrets::generate(dir.path(), false).unwrap();
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    fn parse(&self, text: &str) -> Result<ProxyConfig, ConfigError> {
        parse(text, &self.path())
    }
}

const GOOD: &str = r#"
[server]
id = "eu-1"
region = "eu"
public_url = "http://127.0.0.1:8081/"
listen = "127.0.0.1:8081"
admin_listen = "127.0.0.1:9081"

[upstream]
addresses = ["127.0.0.1:3001"]

[discovery]
url = "http://127.0.0.1:7070"
cluster_token_file = "cluster.token"

[tokens]
issuer = "tether"
audience = "demo"
keyring_file = "keyring.toml"

[login]
upstream_path = "/login"
subject = { json_pointer = "/userId" }
home_region = { json_pointer = "/homeRegion" }
"#;

#[test]
fn good_config_with_defaults() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert_eq!(c.server.public_url, "http://127.0.0.1:8081");
    assert_eq!(c.tokens.access_ttl, Duration::from_secs(120));
    assert_eq!(c.tokens.refresh_ttl, Duration::from_secs(14 * 86400));
    assert_eq!(c.routing.foreign_lock, ForeignLock::Redirect);
    assert_eq!(c.worker_threads.get(), 1);
    assert!(c.discovery.cluster_token.len() >= 32);
    assert_eq!(c.upstream.idle_timeout, Duration::from_millis(1500));
    assert!(!c.log.access);
    assert_eq!(c.log.format, crate::access::LogFormat::Text);
}

fn expect_err(f: &Fixture, text: &str, key: &str) -> String {
    let e = f
        .parse(text)
        .expect_err("config should be refused")
        .to_string();
    assert!(e.contains(key), "error {e:?} should name {key:?}");
    e
}

#[test]
fn bad_values_name_the_key() {
    let f = Fixture::new();
    let swap = |from: &str, to: &str| {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replace(from, to)
    };
    let cases = [
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"keyring.toml\"\naccess_ttl_seconds = 30",
            ),
            "tokens.access_ttl_seconds",
        ),
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"keyring.toml\"\naccess_ttl_seconds = 301",
            ),
            "tokens.access_ttl_seconds",
        ),
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"keyring.toml\"\nrefresh_ttl_days = 6",
            ),
            "tokens.refresh_ttl_days",
        ),
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"keyring.toml\"\nrefresh_ttl_days = 31",
            ),
            "tokens.refresh_ttl_days",
        ),
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"keyring.toml\"\nleeway_seconds = 31",
            ),
            "tokens.leeway_seconds",
        ),
        (
            swap(
                "keyring_file = \"keyring.toml\"",
                "keyring_file = \"missing.toml\"",
            ),
            "tokens.keyring_file",
        ),
        (swap("id = \"eu-1\"", "id = \"eu 1\""), "server.id"),
        (swap("region = \"eu\"", "region = \"\""), "server.region"),
        (
            swap(
                "public_url = \"http://127.0.0.1:8081/\"",
                "public_url = \"ftp://x\"",
            ),
            "server.public_url",
        ),
        (
            swap("listen = \"127.0.0.1:8081\"", "listen = \"localhost\""),
            "server.listen",
        ),
        (
            swap("addresses = [\"127.0.0.1:3001\"]", "addresses = []"),
            "upstream.addresses",
        ),
        (
            swap("addresses = [\"127.0.0.1:3001\"]", "addresses = [\"nope\"]"),
            "upstream.addresses",
        ),
        (
            swap(
                "cluster_token_file = \"cluster.token\"",
                "cluster_token_env = \"TETHER_TEST_SURELY_UNSET_VAR\"",
            ),
            "discovery.cluster_token_file",
        ),
        (
            swap("cluster_token_file = \"cluster.token\"", ""),
            "discovery.cluster_token_file",
        ),
        (
            swap(
                "subject = { json_pointer = \"/userId\" }",
                "subject = { json_pointer = \"userId\" }",
            ),
            "login.subject",
        ),
        (
            swap("subject = { json_pointer = \"/userId\" }", "subject = { }"),
            "login.subject",
        ),
        (
            format!("{GOOD}\n[routing]\nforeign_lock = \"teleport\"\n"),
            "routing.foreign_lock",
        ),
        (format!("{GOOD}\n[log]\naccess = \"yes\"\n"), "log.access"),
        (
            format!("{GOOD}\n[log]\naccess_sample = 0.0\n"),
            "log.access_sample",
        ),
        (
            format!("{GOOD}\n[log]\naccess_subject = \"email\"\n"),
            "log.access_subject",
        ),
        (format!("{GOOD}\n[log]\nformat = \"xml\"\n"), "log.format"),
        (
            swap("[upstream]", "[upstream]\nidle_timeout_ms = 5"),
            "upstream.idle_timeout_ms",
        ),
        (
            format!("{GOOD}\n[routing]\npublic_prefixes = [\"/auth/x\"]\n"),
            "routing.public_prefixes",
        ),
        (
            swap("[server]", "[server]\nworker_threads = 0"),
            "server.worker_threads",
        ),
    ];
    for (text, key) in cases {
        expect_err(&f, &text, key);
    }
}

#[test]
fn unknown_keys_and_missing_tables_are_refused() {
    let f = Fixture::new();
    let e = expect_err(
        &f,
        &GOOD.replace("[server]", "[server]\ncolour = 1"),
        "colour",
    );
    assert!(e.contains("proxy.toml"), "{e}");
    expect_err(&f, &GOOD.replace("[login]", "[login2]"), "login");
}

#[test]
fn short_cluster_token_is_refused() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("short.token"), "abc").unwrap();
    expect_err(
        &f,
        &GOOD.replace("cluster.token", "short.token"),
        "at least 16",
    );
}

#[test]
fn refresh_lifetime_cap_is_the_top_of_the_range() {
    assert_eq!(
        crate::tokens::REFRESH_LIFETIME_CAP,
        super::REFRESH_TTL_RANGE.1 * 86_400
    );
}
