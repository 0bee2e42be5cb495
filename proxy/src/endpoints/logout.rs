//! `POST /auth/logout`: revoke the refresh token's family here and at
//! discovery, so every proxy refuses it.

use pingora_proxy::Session;
use tether_protocol::validate::parse_json;
use tether_protocol::wire::LogoutRequest;

use super::{bad_field, discovery_post, read_body, too_large, Result};
use crate::respond;
use crate::state::State;

pub(super) async fn logout(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit, state.cfg.limits.body_read_timeout).await? else {
        return too_large(session, limit).await;
    };
    let req: LogoutRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return bad_field(session, &e).await,
    };
    match state.tokens.verify_refresh(&req.refresh_token) {
        Ok(c) => {
            state.revoke(&c.fam, c.exp);
            // Tell discovery, so every proxy refuses the family.
            let revoke = tether_protocol::wire::RevokeRequest {
                family: c.fam.clone(),
                expires_at: c.exp,
            };
            let central = discovery_post(state, "/v1/families/revoke", &revoke)
                .await
                .is_ok_and(|r| r.status().is_success());
            if !central {
                tracing::warn!(
                    "logout: discovery did not take the revocation; only this proxy knows of it"
                );
            }
            let body = if central {
                &b"{\"revoked\":true}"[..]
            } else {
                &b"{\"revoked\":true,\"everywhere\":false}"[..]
            };
            respond::json(session, 200, body, &[]).await
        }
        Err(e) => respond::invalid_token(session, e.detail(), false).await,
    }
}
