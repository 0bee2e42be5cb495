//! `GET /closestToMe`: this server, unless it is draining or its upstream
//! is down; then the least-loaded live server of its region.

use pingora_proxy::Session;
use tether_protocol::wire::ClosestResponse;

use super::Result;
use crate::respond;
use crate::state::State;

pub(super) async fn closest(state: &State, session: &mut Session) -> Result<()> {
    let me = &state.cfg.server;
    let view = state.registry.load();
    let draining =
        view.registry.get(&me.id).is_some_and(|s| s.draining) || state.lifecycle.shutting_down();
    let pick = if !draining && state.upstream_healthy() {
        None
    } else {
        view.registry.least_loaded_in(&me.region, |s| s.id == me.id)
    };
    let answer = match pick {
        Some(s) => ClosestResponse {
            closest_server_id: s.id.clone(),
            region: s.region.clone(),
            url: s.url.clone(),
        },
        None => ClosestResponse {
            closest_server_id: me.id.clone(),
            region: me.region.clone(),
            url: me.public_url.clone(),
        },
    };
    drop(view);
    let json = serde_json::to_vec(&answer).unwrap_or_default();
    respond::json(session, 200, json, &[]).await
}
