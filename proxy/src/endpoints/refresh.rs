//! `POST /auth/refresh`: verify the refresh token, probe a server the
//! client reports unreachable, place the client again
//! (`tether_protocol::placement`), rotate the refresh token at discovery,
//! mint the new pair. When no discovery node answers, the
//! `tokens.refresh_when_discovery_down` policy decides (docs/design.md
//! §6b): "extend" re-mints the access token for the current lock and
//! hands the refresh token back unrotated, for at most
//! `tokens.max_extend_seconds` of outage.

use pingora_proxy::Session;
use tether_protocol::placement::{self, PlacementError, Reason};
use tether_protocol::validate::parse_json;
use tether_protocol::wire::{ErrorBody, RefreshRequest, RefreshResponse, ServerSummary};

use super::{bad_field, discovery_post, read_body, too_large, Result};
use crate::metrics::RefreshRejected;
use crate::respond;
use crate::state::State;
use crate::tokens::{DownPolicy, LockTarget};

pub(super) async fn refresh(state: &State, session: &mut Session) -> Result<()> {
    let limit = state.cfg.limits.reserved_body_bytes;
    let Some(body) = read_body(session, limit, state.cfg.limits.body_read_timeout).await? else {
        state.metrics.refresh_rejected(RefreshRejected::TooLarge);
        return too_large(session, limit).await;
    };
    let req: RefreshRequest =
        match parse_json(&body).and_then(|r: RefreshRequest| r.validate().map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                state.metrics.refresh_rejected(RefreshRejected::BadRequest);
                return bad_field(session, &e).await;
            }
        };
    let claims = match state.tokens.verify_refresh(&req.refresh_token) {
        Ok(c) if state.is_revoked(&c.fam) || state.registry.load().registry.is_revoked(&c.fam) => {
            state.metrics.refresh_rejected(RefreshRejected::Revoked);
            let revoked = crate::tokens::TokenError::Revoked.detail();
            return respond::invalid_token(session, revoked, false).await;
        }
        Ok(c) => c,
        Err(e) => {
            state
                .metrics
                .refresh_rejected(RefreshRejected::InvalidToken);
            return respond::invalid_token(session, e.detail(), false).await;
        }
    };
    let me = &state.cfg.server;
    let view = state.registry.load_full();

    // Fast failover: believe "unreachable" only after our own probe fails.
    // Only servers in the registry are probed, at their registry URL.
    // Servers found dead by recent probes stay excluded until discovery
    // catches up.
    let probe = req
        .unreachable_server_id
        .as_deref()
        .filter(|_| state.cfg.routing.fast_failover);
    if let Some(unreachable) = probe {
        if unreachable != me.id {
            if let Some(entry) = view.registry.get(unreachable).filter(|s| s.is_live()) {
                let alive = state.prober.is_alive(&entry.id, &entry.url).await;
                state.metrics.probe(alive);
                if alive {
                    // Alive for us, not for this client: remembered for
                    // this client's family only (rule 0).
                    state.unreachable_reports.record(
                        &claims.fam,
                        &entry.id,
                        std::time::Instant::now(),
                    );
                }
            }
        }
    }
    let known_dead = if state.cfg.routing.fast_failover {
        state.prober.known_dead()
    } else {
        Vec::new()
    };
    let confirmed_dead: Vec<&str> = known_dead
        .iter()
        .map(String::as_str)
        .filter(|id| *id != me.id)
        .collect();

    let cut_off_ids = if state.cfg.routing.fast_failover {
        state
            .unreachable_reports
            .cut_off(&claims.fam, std::time::Instant::now())
    } else {
        Vec::new()
    };
    let cut_off: Vec<&str> = cut_off_ids.iter().map(String::as_str).collect();
    let decision = placement::place(
        &view.registry,
        &placement::Request {
            current: &claims.srv,
            closest: req.closest_server_id.as_deref(),
            critical_task: req.critical_task_in_progress,
            home_region: claims.home.as_deref(),
            answering: &me.id,
            answering_region: &me.region,
            confirmed_dead: &confirmed_dead,
            unreachable_by_client: &cut_off,
        },
        &state.cfg.routing.hysteresis,
    );
    let decision = match decision {
        Ok(d) => d,
        Err(PlacementError::NoServerAvailable) => {
            state.metrics.refresh_rejected(RefreshRejected::NoServer);
            let body = ErrorBody::new("no_server_available")
                .detail("no live server can take this client right now");
            return respond::error(session, 503, &body, &[("retry-after", "5")]).await;
        }
    };
    let mut target = decision.server.summary();
    let mut reason = decision.reason;
    let mut extended = false;
    let mut refresh_id = None;
    if state.cfg.tokens.refresh_rotation {
        match rotate(state, &claims, &target).await {
            Rotation::Issue { jti, iat, srv } => {
                if srv != target.id {
                    // A retry within the grace window: the successor issued
                    // first stands, with the placement it was issued for,
                    // unless that server has died since (then this
                    // placement; the token id, which rotation tracks, is
                    // the same either way).
                    if let Some(s) = view.registry.get(&srv).filter(|s| s.is_live()) {
                        target = s.summary();
                    }
                }
                refresh_id = Some((jti, iat));
            }
            Rotation::Reused => {
                state.metrics.refresh_rejected(RefreshRejected::Reused);
                state.revoke(&claims.fam, claims.exp);
                return respond::invalid_token(
                    session,
                    "refresh token reuse detected; the session is revoked",
                    false,
                )
                .await;
            }
            Rotation::Unavailable => {
                state
                    .metrics
                    .refresh_rejected(RefreshRejected::DiscoveryDown);
                let body = ErrorBody::new("refresh_unavailable")
                    .detail("refresh-token reuse detection is unavailable right now; access tokens keep working, retry shortly");
                return respond::error(session, 503, &body, &[("retry-after", "5")]).await;
            }
            Rotation::Untracked => {}
            Rotation::Extend => {
                // Keep the current lock unless its server is dead (then the
                // placement above, from the last good snapshot, stands).
                if decision.reason != Reason::ServerDown {
                    if let Some(s) = view.registry.get(&claims.srv) {
                        target = s.summary();
                    }
                }
                reason = Reason::DiscoveryUnavailable;
                extended = true;
                state.discovery.extended.inc();
            }
        }
    }
    state.metrics.decision(reason);
    if claims.srv == me.id && target.id != me.id {
        state.lifecycle.locked.moved(&claims.fam);
    }
    let minted = match state.tokens.mint_with(
        &claims.sub,
        LockTarget {
            server_id: &target.id,
            region: &target.region,
        },
        claims.home.as_deref(),
        Some(&claims.fam),
        refresh_id.as_ref().map(|(j, i)| (j.as_str(), *i)),
    ) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("minting tokens failed: {e}");
            let body = ErrorBody::new("internal").detail("could not mint tokens");
            return respond::error(session, 500, &body, &[]).await;
        }
    };
    let answer = RefreshResponse {
        access_token: minted.access,
        // Extended: the presented refresh token, unrotated (nothing for
        // reuse detection to track until discovery is back).
        refresh_token: if extended {
            req.refresh_token
        } else {
            minted.refresh
        },
        token_type: "Bearer".into(),
        expires_in: minted.expires_in,
        server_changed: target.id != claims.srv,
        server: target,
        previous_server_id: claims.srv.clone(),
        reason: reason.as_str().into(),
    };
    let json = serde_json::to_vec(&answer).unwrap_or_default();
    respond::json(session, 200, json, &[]).await
}

/// What the family store said about a refresh.
enum Rotation {
    /// Issue the refresh token with this id and `iat`, locked to `srv`.
    Issue { jti: String, iat: u64, srv: String },
    /// The presented token was reused: the family is revoked.
    Reused,
    /// Discovery could not be asked and the policy is fail-closed.
    Unavailable,
    /// Discovery could not be asked and the policy is fail-open: rotate
    /// without tracking.
    Untracked,
    /// No discovery node answered, the policy is "extend" and the outage
    /// is within `tokens.max_extend_seconds`: re-mint the access token,
    /// hand the refresh token back unrotated.
    Extend,
}

/// How long a rotation whose answer was lost is tried again: well inside
/// discovery's grace window (`refresh_grace_ms`, 10 s by default), so a
/// rotation that was applied is confirmed by a `grace` answer.
const ROTATE_UNSURE_RETRY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The compare-and-set at discovery (docs/design.md §3, RFC 9700 §4.14.2).
async fn rotate(
    state: &State,
    claims: &tether_protocol::claims::RefreshClaims,
    target: &ServerSummary,
) -> Rotation {
    use tether_protocol::wire::{RotateOutcome, RotateRequest, RotateResponse};
    let jti = crate::tokens::successor_jti(&state.successor_key, &claims.fam, &claims.jti);
    let now = crate::tokens::unix_now();
    let request = RotateRequest {
        family: claims.fam.clone(),
        presented: crate::tokens::sha256_hex(&claims.jti),
        successor: crate::tokens::sha256_hex(&jti),
        iat: now,
        srv: target.id.clone(),
        rgn: target.region.clone(),
        expires_at: now + state.cfg.tokens.refresh_ttl.as_secs(),
    };
    // A rotation whose answer was lost (a timeout, a 5xx) may have been
    // applied: giving up then would hand back a refresh token discovery
    // already replaced, and the client's next refresh would read as reuse
    // (a sign-out). The same request again is safe — within the grace
    // window discovery answers `grace` with the same successor — so it is
    // repeated for a few seconds before discovery counts as away. A node
    // that refuses the connection, or answers 503, is away at once.
    let started = std::time::Instant::now();
    let answer = loop {
        let answer = discovery_post(state, "/v1/families/rotate", &request).await;
        // 503 (`store_unavailable`, `warming_up`) is discovery saying it
        // did not apply anything: not unsure.
        let unsure = match &answer {
            Ok(r) => r.status().is_server_error() && r.status().as_u16() != 503,
            Err(e) => e.is_timeout(),
        };
        if !unsure || started.elapsed() >= ROTATE_UNSURE_RETRY_WITHIN {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    // Whether a node answered at all (a 2xx or 4xx): "extend" is for
    // discovery being away, not for an answer the proxy cannot use.
    let mut answered = false;
    let parsed = match answer {
        Ok(r) if r.status().is_success() => {
            answered = true;
            r.json::<RotateResponse>().await.ok()
        }
        Ok(r) => {
            answered = !r.status().is_server_error();
            tracing::warn!(status = %r.status(), "discovery refused the refresh rotation");
            None
        }
        Err(e) => {
            tracing::warn!("refresh rotation at discovery failed: {e}");
            None
        }
    };
    match parsed {
        Some(RotateResponse {
            outcome: RotateOutcome::Revoked,
            ..
        }) => Rotation::Reused,
        Some(RotateResponse {
            iat: Some(iat),
            srv: Some(srv),
            ..
        }) => Rotation::Issue { jti, iat, srv },
        _ => match state.cfg.tokens.when_discovery_down {
            DownPolicy::Extend if answered => Rotation::Unavailable,
            DownPolicy::Extend => {
                let silence = state.discovery.silence();
                if silence <= state.cfg.tokens.max_extend {
                    Rotation::Extend
                } else {
                    tracing::warn!(
                        "no discovery node has answered for {}s, over tokens.max_extend_seconds = {}: refreshes are refused until discovery is back",
                        silence.as_secs(),
                        state.cfg.tokens.max_extend.as_secs()
                    );
                    Rotation::Unavailable
                }
            }
            DownPolicy::FailClosed => Rotation::Unavailable,
            DownPolicy::FailOpen => Rotation::Untracked,
        },
    }
}
