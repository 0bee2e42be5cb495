//! The admin listener: `/metrics` (Prometheus text), `/healthz`, and
//! `/registry` (the snapshot this proxy is using, as JSON), for operators.
//! Bind it to a private address.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use tether_protocol::wire::Snapshot;

use crate::state::State;

pub struct Admin {
    pub state: Arc<State>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let state = &self.state;
        match session.req_header().uri.path() {
            "/metrics" => {
                state
                    .metrics
                    .registry_staleness_seconds
                    .set(state.registry.staleness().as_secs_f64());
                reply(200, "text/plain; version=0.0.4", state.metrics.render())
            }
            "/healthz" => {
                if state.lifecycle.shutting_down() {
                    reply(
                        503,
                        "application/json",
                        b"{\"status\":\"unavailable\",\"error\":\"shutting_down\"}".to_vec(),
                    )
                } else if state.upstream_healthy() {
                    reply(200, "application/json", b"{\"status\":\"ok\"}".to_vec())
                } else {
                    reply(
                        503,
                        "application/json",
                        b"{\"status\":\"unavailable\"}".to_vec(),
                    )
                }
            }
            "/registry" => {
                let view = state.registry.load();
                let snap = Snapshot {
                    version: view.registry.version(),
                    servers: view.registry.servers().to_vec(),
                    revoked_families: view.registry.revoked_families().iter().cloned().collect(),
                };
                reply(
                    200,
                    "application/json",
                    serde_json::to_vec(&snap).unwrap_or_default(),
                )
            }
            _ => reply(
                404,
                "application/json",
                b"{\"error\":\"not_found\"}".to_vec(),
            ),
        }
    }
}
