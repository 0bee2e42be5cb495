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
    assert_eq!(c.limits.h2_idle_timeout, Duration::from_secs(60));
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
        (
            format!("{GOOD}\n[limits]\nh2_idle_timeout_ms = 50\n"),
            "limits.h2_idle_timeout_ms",
        ),
        (
            format!("{GOOD}\n[limits]\nh2_idle_timeout_ms = 4000000\n"),
            "limits.h2_idle_timeout_ms",
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

#[test]
fn idempotency_table_is_optional_checked_and_typed() {
    let f = Fixture::new();
    let absent = f.parse(GOOD).unwrap();
    assert!(absent.idempotency.enabled, "absent table: on, memory store");
    let off = f
        .parse(&format!("{GOOD}\n[idempotency]\nenabled = false\n"))
        .unwrap();
    assert!(!off.idempotency.enabled, "enabled = false");
    let on = f
        .parse(&format!(
            "{GOOD}\n[idempotency]\nenabled = true\nrequired_prefixes = [\"/orders\"]\n\
             ttl_seconds = 600\n[idempotency.store]\nkind = \"redis\"\n\
             url = \"redis://127.0.0.1:6379/0\"\n"
        ))
        .unwrap();
    let i = &on.idempotency;
    assert!(i.enabled);
    assert_eq!(i.ttl, Duration::from_secs(600));
    assert_eq!(i.required_prefixes, vec!["/orders".to_owned()]);
    assert!(matches!(
        i.store,
        crate::idempotency::StoreConfig::Redis { .. }
    ));
    for (extra, key) in [
        (
            "[idempotency]\nttl_seconds = 0\n",
            "idempotency.ttl_seconds",
        ),
        (
            "[idempotency]\nmethods = [\"GET\"]\n",
            "idempotency.methods",
        ),
        (
            "[idempotency]\non_store_error = \"shrug\"\n",
            "idempotency.on_store_error",
        ),
        (
            "[idempotency.store]\nkind = \"memory\"\nurl = \"redis://x\"\n",
            "idempotency.store.url",
        ),
        ("[idempotency]\nretries = 3\n", "retries"),
    ] {
        let e = expect_err(&f, &format!("{GOOD}\n{extra}"), key);
        assert!(e.contains("proxy.toml"), "error names the file: {e}");
    }
}

#[test]
fn cors_section_checked_naming_the_key() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert!(!c.cors.enabled(), "no [cors]: off");
    let c = f
        .parse(&format!(
            "{GOOD}\n[cors]\nallowed_origins = [\"https://app.example.com\", \"http://127.0.0.1:5173\"]\nmax_age_seconds = 120\nallow_headers = [\"Authorization\", \"X-Request-Id\"]\n"
        ))
        .unwrap();
    assert!(c.cors.allows(b"http://127.0.0.1:5173"));
    assert_eq!(c.cors.max_age, Duration::from_secs(120));
    assert_eq!(c.cors.allow_headers, "Authorization, X-Request-Id");
    for (lines, key) in [
        ("allowed_origins = [\"*\"]", "cors.allowed_origins"),
        (
            "allowed_origins = [\"https://app.example.com/\"]",
            "cors.allowed_origins",
        ),
        ("allowed_origins = [\"null\"]", "cors.allowed_origins"),
        (
            "allowed_origins = [\"HTTPS://APP.example.com\"]",
            "cors.allowed_origins",
        ),
        ("max_age_seconds = 100000", "cors.max_age_seconds"),
        ("allow_headers = [\"bad header\"]", "cors.allow_headers"),
    ] {
        let e = f
            .parse(&format!("{GOOD}\n[cors]\n{lines}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{lines}: {e}");
    }
    let e = f
        .parse(&format!("{GOOD}\n[cors]\nallow_origins = []\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("allow_origins"), "unknown key refused: {e}");
}

#[test]
fn shutdown_and_upgrade_keys() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert_eq!(c.lifecycle.shutdown_grace, Duration::from_secs(40));
    assert_eq!(c.lifecycle.shutdown_timeout, Duration::from_secs(20));
    assert_eq!(
        c.lifecycle.upgrade_socket,
        PathBuf::from("/run/tether-proxy/upgrade.sock")
    );
    let set = GOOD.replace(
        "[server]",
        "[server]\nshutdown_grace_seconds = 0\nshutdown_timeout_seconds = 5\nupgrade_socket = \"/tmp/u.sock\"",
    );
    let c = f.parse(&set).unwrap();
    assert_eq!(c.lifecycle.shutdown_grace, Duration::ZERO);
    assert_eq!(c.lifecycle.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.lifecycle.upgrade_socket, PathBuf::from("/tmp/u.sock"));
    let swap = |extra: &str| GOOD.replace("[server]", &format!("[server]\n{extra}"));
    expect_err(
        &f,
        &swap("shutdown_grace_seconds = 601"),
        "server.shutdown_grace_seconds",
    );
    expect_err(
        &f,
        &swap("shutdown_timeout_seconds = 0"),
        "server.shutdown_timeout_seconds",
    );
    expect_err(
        &f,
        &swap("upgrade_socket = \"relative.sock\""),
        "server.upgrade_socket",
    );
}

#[test]
fn discovery_urls_and_the_single_url() {
    let f = Fixture::new();
    // The single `url` stays accepted: a list of one.
    let one = f.parse(GOOD).unwrap();
    assert_eq!(one.discovery.urls, vec!["http://127.0.0.1:7070".to_owned()]);
    let two = f
        .parse(&GOOD.replace(
            "url = \"http://127.0.0.1:7070\"",
            "urls = [\"http://10.0.0.5:7070/\", \"https://disco.example:7443\"]",
        ))
        .unwrap();
    assert_eq!(
        two.discovery.urls,
        vec![
            "http://10.0.0.5:7070".to_owned(),
            "https://disco.example:7443".to_owned()
        ]
    );
    let swap = |to: &str| GOOD.replace("url = \"http://127.0.0.1:7070\"", to);
    for (text, key, says) in [
        (
            swap("url = \"http://a:1\"\nurls = [\"http://b:1\"]"),
            "discovery.urls",
            "exactly one of discovery.url and discovery.urls",
        ),
        (swap(""), "discovery.urls", "set discovery.urls"),
        (swap("urls = []"), "discovery.urls", "at least one"),
        (
            swap("urls = [\"http://a:1\", \"ftp://b\"]"),
            "discovery.urls",
            "ftp://b",
        ),
        (
            swap("urls = [\"http://a:1\", \"http://a:1/\"]"),
            "discovery.urls",
            "listed twice",
        ),
        (swap("url = \"nope\""), "discovery.url", "nope"),
    ] {
        let e = expect_err(&f, &text, key);
        assert!(e.contains(says), "{e:?} should say {says:?}");
    }
}

#[test]
fn refresh_down_policy_defaults_to_extend_and_is_bounded() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert_eq!(c.tokens.when_discovery_down, DownPolicy::Extend);
    assert_eq!(c.tokens.max_extend, Duration::from_secs(21_600));
    let with = |extra: &str| {
        GOOD.replace(
            "keyring_file = \"keyring.toml\"",
            &format!("keyring_file = \"keyring.toml\"\n{extra}"),
        )
    };
    for (policy, want) in [
        ("extend", DownPolicy::Extend),
        ("fail_closed", DownPolicy::FailClosed),
        ("fail_open", DownPolicy::FailOpen),
    ] {
        let c = f
            .parse(&with(&format!(
                "refresh_when_discovery_down = \"{policy}\"\nmax_extend_seconds = 60"
            )))
            .unwrap();
        assert_eq!(c.tokens.when_discovery_down, want);
        assert_eq!(c.tokens.max_extend, Duration::from_secs(60));
    }
    let e = expect_err(
        &f,
        &with("refresh_when_discovery_down = \"stretch\""),
        "tokens.refresh_when_discovery_down",
    );
    assert!(e.contains("\"extend\""), "{e}");
    for bad in ["0", "604801"] {
        let e = expect_err(
            &f,
            &with(&format!("max_extend_seconds = {bad}")),
            "tokens.max_extend_seconds",
        );
        assert!(e.contains("between 1 and 604800 seconds"), "{e}");
    }
    expect_err(&f, &with("max_extend_seconds = -1"), "max_extend_seconds");
}

#[test]
fn tls_http2_needs_tls() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert!(c.tls.is_none());
    let text = GOOD.replace(
        "admin_listen = \"127.0.0.1:9081\"",
        "admin_listen = \"127.0.0.1:9081\"\ntls_http2 = true",
    );
    let e = expect_err(&f, &text, "server.tls_http2");
    assert!(e.contains("over TLS only"), "{e}");
}
