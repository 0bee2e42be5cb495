//! The live page of `tether demo --serve` (docs/demo.md): a small HTTP
//! server in the demo process serving
//!
//! - the page itself, embedded in the binary (`demo/web/`: `index.html`,
//!   `style.css`, `app.js`, and `tether.js`, the browser client built from
//!   `clients/js` and checked in; `scripts/check-js.sh` fails when it
//!   differs from a fresh build);
//! - `GET /api/state?since=N`: the regions (process alive, registry view,
//!   load, metrics), discovery, the crowd's locks and relocks, and the
//!   feed entries after `N`;
//! - `POST /api/regions/{code}/kill|start` and
//!   `POST /api/discovery/stop|start`: what the page's buttons do, done by
//!   the demo process (a real SIGKILL, a real restart on the same port).
//!
//! The page's own client talks to the proxies directly (they allow the
//! page's origin in `[cors]`), never through this server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::live::Live;

const INDEX: &str = include_str!("../web/index.html");
const STYLE: &str = include_str!("../web/style.css");
const APP: &str = include_str!("../web/app.js");
const TETHER: &str = include_str!("../web/tether.js");

pub struct Web {
    pub cluster: Mutex<Cluster>,
    pub live: Arc<Live>,
    pub bin: PathBuf,
    pub http: reqwest::Client,
    /// The page's client "Reconnecting…" wait, ms (the page reads it).
    pub reconnect_wait_ms: u64,
}

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route("/style.css", get(|| async { file("text/css", STYLE) }))
        .route("/app.js", get(|| async { file("text/javascript", APP) }))
        .route(
            "/tether.js",
            get(|| async { file("text/javascript", TETHER) }),
        )
        .route("/api/state", get(state))
        .route("/api/regions/{code}/{action}", post(region_action))
        .route("/api/discovery/{action}", post(discovery_action))
        .with_state(web)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

/// One region as the page sees it.
struct RegionView {
    code: String,
    server_id: String,
    proxy_url: String,
    admin_url: String,
    app_url: String,
    alive: bool,
    pid: u32,
}

async fn state(State(web): State<Arc<Web>>, Query(q): Query<Since>) -> Json<serde_json::Value> {
    let (regions, discovery_url, discovery_alive) = {
        let mut c = web.cluster.lock().await;
        let regions: Vec<RegionView> = c
            .regions
            .iter_mut()
            .map(|r| RegionView {
                code: r.code.clone(),
                server_id: r.server_id.clone(),
                proxy_url: r.proxy_url.clone(),
                admin_url: r.admin_url.clone(),
                app_url: r.app_url.clone(),
                alive: r.proxy.is_running(),
                pid: r.proxy.pid(),
            })
            .collect();
        let alive = c.discovery.is_running();
        (regions, c.discovery_url.clone(), alive)
    };
    // Each live proxy's registry view and metrics, side by side.
    let views = futures_lite(regions.iter().map(|r| {
        let http = web.http.clone();
        let (admin, alive) = (r.admin_url.clone(), r.alive);
        async move {
            if !alive {
                return (None, None);
            }
            let registry = match http.get(format!("{admin}/registry")).send().await {
                Ok(resp) => resp.json::<tether_protocol::wire::Snapshot>().await.ok(),
                Err(_) => None,
            };
            let metrics = match http.get(format!("{admin}/metrics")).send().await {
                Ok(resp) => resp.text().await.ok(),
                Err(_) => None,
            };
            (registry, metrics)
        }
    }))
    .await;
    // The registry as the first live proxy sees it gives loads and health.
    let seen = views.iter().find_map(|(r, _)| r.as_ref());
    let out: Vec<serde_json::Value> = regions
        .iter()
        .zip(&views)
        .map(|(r, (registry, metrics))| {
            let entry = seen.and_then(|s| s.servers.iter().find(|e| e.id == r.server_id));
            let (decisions, requests) = metrics
                .as_deref()
                .map(parse_metrics)
                .unwrap_or_default();
            json!({
                "code": r.code,
                "serverId": r.server_id,
                "proxyUrl": r.proxy_url,
                "adminUrl": r.admin_url,
                "appUrl": r.app_url,
                "alive": r.alive,
                "pid": r.pid,
                "inRegistry": entry.is_some(),
                "healthy": entry.is_some_and(|e| e.healthy),
                "load": entry.map(|e| e.load),
                "sees": registry.as_ref().map(|s| s.servers.iter().map(|e| e.id.clone()).collect::<Vec<_>>()),
                "registryVersion": registry.as_ref().map(|s| s.version),
                "refreshDecisions": decisions,
                "requests": requests,
            })
        })
        .collect();
    Json(json!({
        "regions": out,
        "discovery": {"url": discovery_url, "alive": discovery_alive},
        "crowd": web.live.snapshot(q.since),
        "reconnectWaitMs": web.reconnect_wait_ms,
    }))
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_lite<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => panic!("a state fetch task failed: {e}"),
        }
    }
    out
}

/// `refresh_decisions_total` by reason and `requests_total` (all
/// outcomes) from a proxy's Prometheus text.
fn parse_metrics(text: &str) -> (BTreeMap<String, u64>, u64) {
    let mut decisions = BTreeMap::new();
    let mut requests = 0;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(rest) = name.strip_prefix("tether_proxy_refresh_decisions_total{reason=\"") {
            if let Some((reason, _)) = rest.split_once('"') {
                *decisions.entry(reason.to_owned()).or_insert(0) += value as u64;
            }
        } else if name.starts_with("tether_proxy_requests_total{") {
            requests += value as u64;
        }
    }
    (decisions, requests)
}

fn answer(status: StatusCode, v: serde_json::Value) -> Response {
    (status, Json(v)).into_response()
}

async fn region_action(
    State(web): State<Arc<Web>>,
    Path((code, action)): Path<(String, String)>,
) -> Response {
    let mut c = web.cluster.lock().await;
    let dir = c.logs();
    let Some(r) = c.regions.iter_mut().find(|r| r.code == code) else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "no such region"}));
    };
    match action.as_str() {
        "kill" => {
            if !r.proxy.is_running() {
                return answer(StatusCode::CONFLICT, json!({"error": "not running"}));
            }
            r.proxy.kill();
            web.live.note(
                "kill",
                Some(&code),
                format!("proxy {} killed (SIGKILL)", r.server_id),
            );
            answer(StatusCode::OK, json!({"killed": r.server_id}))
        }
        "start" => {
            if r.proxy.is_running() {
                return answer(StatusCode::CONFLICT, json!({"error": "already running"}));
            }
            let bin = web.bin.clone();
            let config = dir.join(format!("proxy.{code}.toml"));
            let log = dir.join(format!("proxy.{code}.log"));
            let name = format!("proxy {code}");
            let started = tokio::task::spawn_blocking(move || {
                crate::cluster::spawn_again(
                    &bin,
                    &name,
                    &["proxy", "--config"],
                    &config,
                    &log,
                    "listening on",
                )
            })
            .await;
            match started {
                Ok(Ok(proc)) => {
                    r.proxy = proc;
                    web.live.note(
                        "start",
                        Some(&code),
                        format!("proxy {} started again on {}", r.server_id, r.proxy_url),
                    );
                    answer(StatusCode::OK, json!({"started": r.server_id}))
                }
                Ok(Err(e)) => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
                Err(e) => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"error": "kill or start"})),
    }
}

async fn discovery_action(State(web): State<Arc<Web>>, Path(action): Path<String>) -> Response {
    let mut c = web.cluster.lock().await;
    let dir = c.logs();
    match action.as_str() {
        "stop" => {
            if !c.discovery.is_running() {
                return answer(StatusCode::CONFLICT, json!({"error": "not running"}));
            }
            c.discovery.kill();
            web.live.note(
                "discovery",
                None,
                "discovery stopped: the proxies keep their last registry".into(),
            );
            answer(StatusCode::OK, json!({"stopped": true}))
        }
        "start" => {
            if c.discovery.is_running() {
                return answer(StatusCode::CONFLICT, json!({"error": "already running"}));
            }
            let bin = web.bin.clone();
            let config = dir.join("discovery.toml");
            let log = dir.join("discovery.log");
            let started = tokio::task::spawn_blocking(move || {
                crate::cluster::spawn_again(
                    &bin,
                    "discovery",
                    &["discovery", "--config"],
                    &config,
                    &log,
                    "tether discovery listening on ",
                )
            })
            .await;
            match started {
                Ok(Ok(proc)) => {
                    c.discovery = proc;
                    web.live.note(
                        "discovery",
                        None,
                        "discovery started again: the proxies register within a heartbeat".into(),
                    );
                    answer(StatusCode::OK, json!({"started": true}))
                }
                Ok(Err(e)) => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
                Err(e) => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": e.to_string()}),
                ),
            }
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"error": "stop or start"})),
    }
}

/// Serves the page until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, web: Arc<Web>) {
    if let Err(e) = axum::serve(listener, router(web)).await {
        tracing::error!("the demo page server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parsed() {
        let text = "# HELP x\ntether_proxy_refresh_decisions_total{reason=\"server_down\"} 3\n\
                    tether_proxy_refresh_decisions_total{reason=\"kept\",server=\"eu-1\"} 10\n\
                    tether_proxy_requests_total{outcome=\"forwarded\"} 7\n\
                    tether_proxy_requests_total{outcome=\"reserved\"} 2\n";
        let (d, r) = parse_metrics(text);
        assert_eq!(d["server_down"], 3);
        assert_eq!(d["kept"], 10);
        assert_eq!(r, 9);
    }
}
