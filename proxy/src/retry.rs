//! Upstream failures: which are retried on a fresh connection, and what
//! the client is told about the rest (docs/design.md §12).
//!
//! The one failure worth retrying is the keep-alive race: the proxy
//! reuses a pooled connection at the moment the app closes it as idle, so
//! the request meets a closed socket before any byte of an answer. The app
//! never read it (it was closing the connection), so it is sent again on a
//! fresh connection, whatever the method, as long as the proxy still holds
//! the whole request body and nothing was sent to the client yet. A failed
//! connect is retried too (nothing was sent). Everything else is answered
//! honestly: `504` for a timeout, `502` for a bad or cut answer, `503` only
//! when no upstream is healthy.

use pingora_error::{Error, ErrorType, RetryType};

/// How many times one request may be sent again after a failure.
pub const MAX_RETRIES: u8 = 3;

/// What the proxy knows when an attempt fails.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The upstream connection came from the pool (it served a request
    /// before this one).
    pub reused: bool,
    /// The request body is held in full (it can be sent again).
    pub body_replayable: bool,
    /// Part of the answer already went to the client.
    pub response_started: bool,
    /// Retries already made for this request.
    pub retries: u8,
}

/// Whether a failure on an established (or reused) connection is sent
/// again on a fresh one.
pub fn retry_after_proxy_error(etype: &ErrorType, hint: RetryType, a: Attempt) -> bool {
    if !a.reused || !a.body_replayable || a.response_started || a.retries >= MAX_RETRIES {
        return false;
    }
    // The stale-connection signatures: the peer closed or reset the
    // socket, or the request could not be written. Pingora marks the
    // read-side ones `ReusedOnly`; a write on a socket the peer closed is
    // the same race seen from the other side. A timeout is not: the app
    // may be working on the request.
    match etype {
        ErrorType::WriteError => true,
        ErrorType::ConnectionClosed | ErrorType::ReadError => {
            matches!(hint, RetryType::ReusedOnly | RetryType::Decided(true))
        }
        _ => false,
    }
}

/// Whether a failed connect is tried again (on the next healthy upstream):
/// nothing was sent, so any method may be.
pub fn retry_after_connect_error(etype: &ErrorType, retries: u8) -> bool {
    retries < MAX_RETRIES
        && matches!(
            etype,
            ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::ConnectTimedout
        )
}

/// What the client is told when the local upstream failed before an
/// answer started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `504 upstream_timeout`: the app did not answer in time.
    Timeout,
    /// `502 bad_gateway`: the app's answer was bad, cut, or the
    /// connection broke.
    BadAnswer,
    /// `503 upstream_unavailable`: no healthy upstream to try.
    Unavailable,
}

impl Failure {
    /// Classifies an upstream error; `any_healthy`: whether the pool still
    /// has a healthy member.
    pub fn of(etype: &ErrorType, any_healthy: bool) -> Failure {
        match etype {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => {
                Failure::Timeout
            }
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError
                if !any_healthy =>
            {
                Failure::Unavailable
            }
            _ => Failure::BadAnswer,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Failure::Timeout => 504,
            Failure::BadAnswer => 502,
            Failure::Unavailable => 503,
        }
    }
}

/// The error's kind and retry hint, for the functions above.
pub fn parts(e: &Error) -> (&ErrorType, RetryType) {
    (e.etype(), e.retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Attempt = Attempt {
        reused: true,
        body_replayable: true,
        response_started: false,
        retries: 0,
    };

    #[test]
    fn the_keep_alive_race_is_retried() {
        for (t, hint) in [
            (ErrorType::ConnectionClosed, RetryType::ReusedOnly),
            (ErrorType::ReadError, RetryType::ReusedOnly),
            (ErrorType::WriteError, RetryType::Decided(false)),
        ] {
            assert!(retry_after_proxy_error(&t, hint, FRESH), "{t:?}");
        }
    }

    #[test]
    fn nothing_else_is_retried() {
        let closed = ErrorType::ConnectionClosed;
        let hint = RetryType::ReusedOnly;
        for a in [
            Attempt {
                reused: false,
                ..FRESH
            },
            Attempt {
                body_replayable: false,
                ..FRESH
            },
            Attempt {
                response_started: true,
                ..FRESH
            },
            Attempt {
                retries: MAX_RETRIES,
                ..FRESH
            },
        ] {
            assert!(!retry_after_proxy_error(&closed, hint, a), "{a:?}");
        }
        for t in [
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
            ErrorType::InvalidHTTPHeader,
            ErrorType::H1Error,
        ] {
            assert!(!retry_after_proxy_error(&t, hint, FRESH), "{t:?}");
        }
        // A TLS read error Pingora declared unsafe to retry.
        assert!(!retry_after_proxy_error(
            &ErrorType::ReadError,
            RetryType::Decided(false),
            FRESH
        ));
    }

    #[test]
    fn connect_failures_are_retried_a_bounded_number_of_times() {
        assert!(retry_after_connect_error(&ErrorType::ConnectRefused, 0));
        assert!(!retry_after_connect_error(
            &ErrorType::ConnectRefused,
            MAX_RETRIES
        ));
        assert!(!retry_after_connect_error(
            &ErrorType::TLSHandshakeFailure,
            0
        ));
    }

    #[test]
    fn failures_map_to_honest_statuses() {
        assert_eq!(Failure::of(&ErrorType::ReadTimedout, true).status(), 504);
        assert_eq!(
            Failure::of(&ErrorType::ConnectTimedout, false).status(),
            504
        );
        assert_eq!(
            Failure::of(&ErrorType::ConnectionClosed, true).status(),
            502
        );
        assert_eq!(
            Failure::of(&ErrorType::InvalidHTTPHeader, true).status(),
            502
        );
        assert_eq!(Failure::of(&ErrorType::ConnectRefused, true).status(), 502);
        assert_eq!(Failure::of(&ErrorType::ConnectRefused, false).status(), 503);
    }
}
