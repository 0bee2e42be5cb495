//! JSON bodies of the public contract (docs/design.md §4 and §6).
//!
//! Field names are camelCase on the wire exactly as docs/design.md spells them.
//! Request bodies are checked twice: serde rejects wrong shapes (use
//! [`crate::validate::parse_json`] to get the failing field's path), then
//! each request type's `validate()` checks the values.

use serde::{Deserialize, Serialize};

// The length limits are the validation layer's; named here too because
// they bound what travels on the wire.
use crate::validate::FieldError;
pub use crate::validate::{MAX_ID_LEN, MAX_REGION_LEN, MAX_TOKEN_LEN, MAX_URL_LEN};

/// `POST /v1/heartbeat` body: one proxy ("server") announcing itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// Stable server id, 1–128 chars of `[A-Za-z0-9._-]`.
    pub id: String,
    /// Region code, 1–64 chars of `[A-Za-z0-9._-]`.
    pub region: String,
    /// Public base URL of the server's proxy (http or https).
    pub url: String,
    /// Load figure, finite and ≥ 0. The proxy reports the mean number of
    /// requests in flight over the last heartbeat interval.
    pub load: f64,
    /// Whether the server can serve (has a healthy upstream).
    pub healthy: bool,
    /// A draining server keeps its clients' critical tasks but takes no new
    /// placements.
    #[serde(default)]
    pub draining: bool,
}

impl Heartbeat {
    /// Checks values that serde's shape check cannot.
    pub fn validate(&self) -> Result<(), FieldError> {
        crate::validate::server_id("id", &self.id)?;
        crate::validate::region("region", &self.region)?;
        crate::validate::server_url("url", &self.url)?;
        if !self.load.is_finite() || self.load < 0.0 {
            return Err(FieldError::new(
                "load",
                format!(
                    "{} is not allowed: load must be a finite number >= 0",
                    self.load
                ),
            ));
        }
        Ok(())
    }
}

/// `POST /v1/heartbeat` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    /// How long the registry keeps the server without a new heartbeat, in ms.
    pub ttl_ms: u64,
    /// Registry version after applying this heartbeat.
    pub registry_version: u64,
}

/// One server as listed by `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntry {
    pub id: String,
    pub region: String,
    pub url: String,
    pub load: f64,
    pub healthy: bool,
    #[serde(default)]
    pub draining: bool,
    /// Milliseconds since the server's last heartbeat, measured by
    /// discovery when it built the listing (an age, so clocks of different
    /// hosts never need to agree).
    #[serde(default)]
    pub last_seen_ms: u64,
}

impl ServerEntry {
    /// Live: present in the registry and reporting a healthy upstream.
    pub fn is_live(&self) -> bool {
        self.healthy
    }

    /// Eligible for a new placement: live and not draining.
    pub fn is_eligible(&self) -> bool {
        self.healthy && !self.draining
    }

    pub fn summary(&self) -> ServerSummary {
        ServerSummary {
            id: self.id.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
        }
    }
}

/// `GET /v1/servers` answer: the whole registry at one version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub version: u64,
    pub servers: Vec<ServerEntry>,
    /// Refresh families revoked (reuse detected, or logout) whose tokens
    /// have not expired yet: every proxy refuses their tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_families: Vec<String>,
}

/// `{"id","url","region"}`: how a server is named to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerSummary {
    pub id: String,
    pub url: String,
    pub region: String,
}

/// `POST /auth/refresh` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_server_id: Option<String>,
    #[serde(default)]
    pub critical_task_in_progress: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_server_id: Option<String>,
}

impl RefreshRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.refresh_token.is_empty() {
            return Err(FieldError::new("refreshToken", "must not be empty"));
        }
        if self.refresh_token.len() > MAX_TOKEN_LEN {
            return Err(FieldError::new(
                "refreshToken",
                format!(
                    "is {} bytes; at most {MAX_TOKEN_LEN} allowed",
                    self.refresh_token.len()
                ),
            ));
        }
        if let Some(id) = &self.closest_server_id {
            crate::validate::server_id("closestServerId", id)?;
        }
        if let Some(id) = &self.unreachable_server_id {
            crate::validate::server_id("unreachableServerId", id)?;
        }
        Ok(())
    }
}

/// `POST /auth/refresh` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    pub server: ServerSummary,
    pub server_changed: bool,
    pub previous_server_id: String,
    /// A [`crate::placement::Reason`] in its wire spelling.
    pub reason: String,
}

/// `POST /auth/logout` body: the refresh token whose family is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogoutRequest {
    pub refresh_token: String,
}

/// `GET /closestToMe` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosestResponse {
    pub closest_server_id: String,
    pub region: String,
    pub url: String,
}

/// Every error body carries `error`; the rest depends on the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code: `invalid_token`, `invalid_request`,
    /// `wrong_server`, `server_unavailable`, `upstream_unavailable`, …
    pub error: String,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `invalid_request`: the offending field (a JSON path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `server_unavailable`: what the client should do (`refresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// For `wrong_server`: where the client is locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_server: Option<ServerSummary>,
}

impl ErrorBody {
    pub fn new(error: &str) -> Self {
        ErrorBody {
            error: error.to_owned(),
            detail: None,
            field: None,
            action: None,
            locked_server: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// `400 invalid_request` naming the bad field.
    pub fn invalid_field(err: &FieldError) -> Self {
        ErrorBody {
            field: Some(err.field.clone()),
            ..ErrorBody::new("invalid_request").detail(err.to_string())
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"error\":\"internal\"}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_wire_names_are_camel_case() {
        let hb: Heartbeat = serde_json::from_str(
            r#"{"id":"eu-1","region":"eu","url":"http://127.0.0.1:1","load":0.5,"healthy":true}"#,
        )
        .unwrap();
        assert!(!hb.draining);
        let ack = serde_json::to_value(HeartbeatAck {
            ttl_ms: 6000,
            registry_version: 3,
        })
        .unwrap();
        assert_eq!(ack, serde_json::json!({"ttlMs":6000,"registryVersion":3}));
    }

    #[test]
    fn refresh_response_matches_design() {
        let r = RefreshResponse {
            access_token: "a".into(),
            refresh_token: "r".into(),
            token_type: "Bearer".into(),
            expires_in: 120,
            server: ServerSummary {
                id: "s".into(),
                url: "http://x".into(),
                region: "eu".into(),
            },
            server_changed: true,
            previous_server_id: "p".into(),
            reason: "server_down".into(),
        };
        let v = serde_json::to_value(r).unwrap();
        for k in [
            "accessToken",
            "refreshToken",
            "tokenType",
            "expiresIn",
            "server",
            "serverChanged",
            "previousServerId",
            "reason",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }

    #[test]
    fn heartbeat_rejects_bad_values_naming_the_field() {
        let good = Heartbeat {
            id: "a".into(),
            region: "eu".into(),
            url: "http://127.0.0.1:8080".into(),
            load: 1.0,
            healthy: true,
            draining: false,
        };
        assert!(good.validate().is_ok());
        let cases: Vec<(&str, Heartbeat)> = vec![
            (
                "id",
                Heartbeat {
                    id: String::new(),
                    ..good.clone()
                },
            ),
            (
                "region",
                Heartbeat {
                    region: String::new(),
                    ..good.clone()
                },
            ),
            (
                "url",
                Heartbeat {
                    url: "ftp://x".into(),
                    ..good.clone()
                },
            ),
            (
                "url",
                Heartbeat {
                    url: "not a url".into(),
                    ..good.clone()
                },
            ),
            (
                "load",
                Heartbeat {
                    load: -1.0,
                    ..good.clone()
                },
            ),
            (
                "load",
                Heartbeat {
                    load: f64::NAN,
                    ..good.clone()
                },
            ),
            (
                "load",
                Heartbeat {
                    load: f64::INFINITY,
                    ..good.clone()
                },
            ),
            (
                "id",
                Heartbeat {
                    id: "a/b".into(),
                    ..good.clone()
                },
            ),
        ];
        for (field, hb) in cases {
            assert_eq!(hb.validate().unwrap_err().field, field, "{hb:?}");
        }
    }

    #[test]
    fn refresh_request_validation() {
        let r: RefreshRequest = serde_json::from_str(r#"{"refreshToken":"x"}"#).unwrap();
        assert!(r.validate().is_ok());
        assert!(!r.critical_task_in_progress);
        let r: RefreshRequest =
            serde_json::from_str(r#"{"refreshToken":"x","closestServerId":"http://evil/"}"#)
                .unwrap();
        assert_eq!(r.validate().unwrap_err().field, "closestServerId");
        let r: RefreshRequest = serde_json::from_str(r#"{"refreshToken":""}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().field, "refreshToken");
    }
}

/// `POST /v1/families/rotate` (proxy → discovery): a refresh presents the
/// refresh token whose jti hashes to `presented`; the proxy proposes the
/// successor. Only SHA-256 hashes of token ids travel and are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateRequest {
    /// Refresh family id (the `fam` claim).
    pub family: String,
    /// Hex SHA-256 of the presented refresh token's `jti`.
    pub presented: String,
    /// Hex SHA-256 of the successor's `jti`.
    pub successor: String,
    /// The successor's `iat`, `srv` and `rgn`, kept so a retry within the
    /// grace window gets the very same successor.
    pub iat: u64,
    pub srv: String,
    pub rgn: String,
    /// Unix seconds after which the family's tokens are expired anyway
    /// (how long discovery must remember it).
    pub expires_at: u64,
}

/// The outcome of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotateOutcome {
    /// The presented token was current: the proposed successor is now.
    Rotated,
    /// The presented token was rotated moments ago (within the grace
    /// window): here is the successor already issued.
    Grace,
    /// The presented token was reused outside the grace window, or the
    /// family was revoked: the family is (now) revoked.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateResponse {
    pub outcome: RotateOutcome,
    /// The successor to issue (the proposal when `rotated`, the earlier one
    /// when `grace`); absent when `revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rgn: Option<String>,
}

/// `POST /v1/families/revoke` (logout, or an operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeRequest {
    pub family: String,
    pub expires_at: u64,
}

fn hex_digest(field: &str, v: &str) -> Result<(), FieldError> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be a hex SHA-256 digest (64 hex characters)",
        ))
    }
}

/// Family ids are 1–64 chars of `[A-Za-z0-9_-]`.
pub fn validate_family(field: &str, v: &str) -> Result<(), FieldError> {
    if !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 1-64 characters of A-Z a-z 0-9 - _",
        ))
    }
}

impl RotateRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_family("family", &self.family)?;
        hex_digest("presented", &self.presented)?;
        hex_digest("successor", &self.successor)?;
        crate::validate::server_id("srv", &self.srv)?;
        crate::validate::region("rgn", &self.rgn)?;
        Ok(())
    }
}

impl RevokeRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_family("family", &self.family)
    }
}
