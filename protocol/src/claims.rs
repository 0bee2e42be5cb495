//! Token claims (docs/design.md §3). Times are Unix seconds.

use serde::{Deserialize, Serialize};

/// Claims of a short-lived access token (`typ: at+jwt`, 60–300 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The locked server id.
    pub srv: String,
    /// The locked server's region.
    pub rgn: String,
    /// The user's home region, when the application assigns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Refresh family id: ties the access token to the refresh chain that
    /// minted it, so revoking the family can be enforced.
    pub fam: String,
}

/// Claims of a long-lived refresh token (`typ: rt+jwt`, 7–30 days).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub fam: String,
    /// The server the client was locked to when this token was minted.
    pub srv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}
