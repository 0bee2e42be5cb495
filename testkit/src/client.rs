//! Client-side helpers: logging in and refreshing through a proxy, plain
//! requests, minting tokens with `tether token mint`, reading metrics.

use std::path::Path;
use std::process::Command;

use crate::proc::tether_bin;

/// The value of a metric line (first sample whose line starts with
/// `prefix`), e.g. `tether_proxy_requests_total{outcome="forwarded"`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What a login through a proxy returned.
#[derive(Clone, Debug)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub server_id: String,
    pub server_url: String,
    pub server_region: String,
    pub expires_in: u64,
    pub body: serde_json::Value,
}

pub async fn login(
    http: &reqwest::Client,
    proxy_url: &str,
    user: &str,
    home: Option<&str>,
) -> Login {
    let mut body = serde_json::json!({"username": user, "password": "pw"});
    if let Some(h) = home {
        body["home"] = h.into();
    }
    let r = http
        .post(format!("{proxy_url}/auth/login"))
        .json(&body)
        .send()
        .await
        .expect("login request");
    assert_eq!(r.status(), 200, "login status");
    let h = |name: &str| {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("login answer lacks {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let l = Login {
        access: h("tether-access-token"),
        refresh: h("tether-refresh-token"),
        server_id: h("tether-server-id"),
        server_url: h("tether-server-url"),
        server_region: h("tether-server-region"),
        expires_in: h("tether-expires-in").parse().unwrap(),
        body: serde_json::Value::Null,
    };
    Login {
        body: r.json().await.expect("login body"),
        ..l
    }
}

pub async fn refresh(
    http: &reqwest::Client,
    proxy_url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{proxy_url}/auth/refresh"))
        .json(&body)
        .send()
        .await
        .expect("refresh request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

/// Mints tokens with `tether token mint` and a proxy's config.
pub fn mint(config: &Path, sub: &str, srv: &str, region: &str) -> (String, String) {
    let out = Command::new(tether_bin())
        .args(["token", "mint", "--config"])
        .arg(config)
        .args(["--sub", sub, "--srv", srv, "--region", region])
        .output()
        .expect("tether token mint");
    assert!(
        out.status.success(),
        "mint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("mint json");
    (
        v["accessToken"].as_str().unwrap().to_owned(),
        v["refreshToken"].as_str().unwrap().to_owned(),
    )
}
