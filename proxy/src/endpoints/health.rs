//! `GET /healthz`: 200 while at least one upstream is healthy, else 503;
//! 503 during the shutdown grace (`lifecycle`), so health checks take the
//! server out of rotation while it still serves.

use pingora_proxy::Session;

use super::Result;
use crate::respond;
use crate::state::State;

pub(super) async fn health(state: &State, session: &mut Session) -> Result<()> {
    if state.lifecycle.shutting_down() {
        respond::json(
            session,
            503,
            &b"{\"status\":\"unavailable\",\"error\":\"shutting_down\"}"[..],
            &[],
        )
        .await
    } else if state.upstream_healthy() {
        respond::json(session, 200, &b"{\"status\":\"ok\"}"[..], &[]).await
    } else {
        respond::json(
            session,
            503,
            &b"{\"status\":\"unavailable\",\"error\":\"upstream_unavailable\"}"[..],
            &[],
        )
        .await
    }
}
