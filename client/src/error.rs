//! What can go wrong talking to an app behind tether.

use reqwest::StatusCode;
use tether_protocol::wire::ErrorBody;

/// The global URL could not be resolved right now (for example, a
/// geo-DNS resolver found no healthy region).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

/// Every failure of a [`crate::Client`] call. An HTTP answer from the app,
/// whatever its status, is not an error of [`crate::Client::request`]: it
/// is returned as a [`crate::Response`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is out of range.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The request body could not be encoded.
    #[error("cannot encode the request body: {0}")]
    Encode(#[source] serde_json::Error),
    /// The global URL resolver failed.
    #[error("cannot resolve the global URL: {0}")]
    Resolve(#[from] ResolveError),
    /// The connection could not be made: nothing reached the server.
    #[error("{what} {url}: cannot connect: {source}")]
    Connect {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A failure after the connection was made (timeout, reset, cut-off
    /// answer): the request may have reached the server, so it is never
    /// retried by the SDK.
    #[error("{what} {url}: transport failure (the request may have reached the server): {source}")]
    Transport {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An SDK call (login, refresh, logout, closestToMe) got a status it
    /// cannot use. `body` is the parsed `{"error",…}` body when there was one.
    #[error("{what}: unexpected HTTP status {status}{}", describe(.body.as_deref()))]
    Status {
        what: &'static str,
        status: StatusCode,
        body: Option<Box<ErrorBody>>,
        /// The raw body, at most 4 KiB of it, lossily decoded.
        text: String,
    },
    /// A 2xx answer the SDK cannot use: a missing or malformed `Tether-*`
    /// header, bad JSON, an unusable URL.
    #[error("{what}: bad answer from the server: {detail}")]
    BadAnswer { what: &'static str, detail: String },
    /// The refresh token was refused (expired, revoked or invalid): the
    /// user must log in again. The session is cleared.
    #[error("session expired: log in again{}", describe(.body.as_deref()))]
    SessionExpired { body: Option<Box<ErrorBody>> },
    /// No session: call [`crate::Client::login`] first.
    #[error("not logged in")]
    NotLoggedIn,
    /// Every server and the global URL stayed unreachable through all the
    /// reconnect waits.
    #[error("no server available after {attempts} reconnect waits: {last}")]
    NoServerAvailable { attempts: u32, last: Box<Error> },
}

fn describe(body: Option<&ErrorBody>) -> String {
    match body {
        Some(b) => match &b.detail {
            Some(d) => format!(" ({}: {d})", b.error),
            None => format!(" ({})", b.error),
        },
        None => String::new(),
    }
}

impl Error {
    /// True when no answer could be got through at all: the connection
    /// failed, the resolver failed, the transport failed, or the server
    /// answered 5xx. The SDK's refresh treats these as "try again later".
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Resolve(_) | Error::Transport { .. } => true,
            Error::Status { status, .. } => status.is_server_error(),
            Error::NoServerAvailable { .. } => true,
            _ => false,
        }
    }

    /// The machine-readable `error` code of the server's answer, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { body: Some(b), .. } | Error::SessionExpired { body: Some(b) } => {
                Some(&b.error)
            }
            _ => None,
        }
    }

    /// Builds [`Error::Status`] from an answer.
    pub(crate) fn status(what: &'static str, status: StatusCode, body: &[u8]) -> Self {
        Error::Status {
            what,
            status,
            body: serde_json::from_slice(body).ok().map(Box::new),
            text: lossy_prefix(body),
        }
    }
}

const MAX_TEXT: usize = 4 * 1024;

fn lossy_prefix(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_TEXT)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_error_keeps_the_error_body() {
        let e = Error::status(
            "login",
            StatusCode::UNAUTHORIZED,
            br#"{"error":"bad_credentials"}"#,
        );
        assert_eq!(e.code(), Some("bad_credentials"));
        assert!(!e.is_unreachable());
        assert_eq!(
            e.to_string(),
            "login: unexpected HTTP status 401 Unauthorized (bad_credentials)"
        );

        let e = Error::status("refresh", StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(e.code(), None);
        assert!(e.is_unreachable());
        match e {
            Error::Status { text, body, .. } => {
                assert_eq!(text, "<html>oops</html>");
                assert!(body.is_none());
            }
            other => panic!("{other:?}"),
        }
        let e = Error::status("x", StatusCode::BAD_REQUEST, &vec![b'a'; 10_000]);
        match e {
            Error::Status { text, .. } => assert_eq!(text.len(), MAX_TEXT),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_expired_describes_the_body() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"invalid_token","detail":"revoked"}"#).unwrap();
        let e = Error::SessionExpired {
            body: Some(Box::new(body)),
        };
        assert_eq!(
            e.to_string(),
            "session expired: log in again (invalid_token: revoked)"
        );
        assert_eq!(e.code(), Some("invalid_token"));
        assert!(!e.is_unreachable());
    }
}
