//! Request framing an edge refuses (docs/design.md §4), checked before the
//! path or the token is looked at. Pingora already rejects most broken
//! framing (differing `Content-Length` values, a non-chunked final
//! `Transfer-Encoding`, `Transfer-Encoding` on HTTP/1.0, two `Host`
//! fields); what it lets through, and an edge in front of unknown
//! backends should not, is settled here:
//!
//! - `Content-Length` together with `Transfer-Encoding` (RFC 9112 §6.3
//!   lets a server read it as chunked; a backend or a second proxy may
//!   read it the other way, which is how requests are smuggled): 400 and
//!   the connection closed, as nginx does. Pingora drops the
//!   `Content-Length` line while parsing, so the raw head is consulted;
//! - an HTTP/1.1 request without `Host` (RFC 9112 §3.2): 400;
//! - a list-valued `Content-Length` (`5, 5`, or two equal lines, which
//!   Pingora accepts when the values agree): normalised to one value, so
//!   the app never sees a list.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Version};
use pingora_http::RequestHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    ContentLengthAndTransferEncoding,
    MissingHost,
}

impl FramingError {
    pub fn detail(self) -> &'static str {
        match self {
            FramingError::ContentLengthAndTransferEncoding => {
                "the request has both Content-Length and Transfer-Encoding, which is refused"
            }
            FramingError::MissingHost => "an HTTP/1.1 request must carry a Host header",
        }
    }
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

/// Whether a raw request head (request line and header lines, as read
/// from the client) has a `Content-Length` field, in any case.
pub fn raw_head_has_content_length(head: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && matches!(line[NAME.len()], b':' | b' ' | b'\t')
    })
}

/// Whether [`check`] needs the raw head: only for a request with
/// `Transfer-Encoding`, whose `Content-Length` line Pingora dropped.
pub fn needs_raw_head(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
}

/// Checks and normalises `req`'s framing. `raw_head`: the raw head bytes
/// when [`needs_raw_head`] says so.
pub fn check(req: &mut RequestHeader, raw_head: Option<&[u8]>) -> Result<(), FramingError> {
    if req.version == Version::HTTP_11 && !req.headers.contains_key(HOST) {
        return Err(FramingError::MissingHost);
    }
    if req.headers.contains_key(TRANSFER_ENCODING) {
        if req.headers.contains_key(CONTENT_LENGTH)
            || raw_head.is_some_and(raw_head_has_content_length)
        {
            return Err(FramingError::ContentLengthAndTransferEncoding);
        }
        return Ok(());
    }
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let (first, second) = (values.next(), values.next());
    let listed = match first {
        Some(v) => second.is_some() || v.as_bytes().contains(&b','),
        None => false,
    };
    if listed {
        // Pingora has checked that every listed value is the same number;
        // keep that one.
        let one = first
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .and_then(|v| HeaderValue::from_str(v).ok());
        if let Some(one) = one {
            // Only fails for an invalid name, and this one is static.
            let _ = req.insert_header(CONTENT_LENGTH, one);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).expect("request");
        r.set_version(version);
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn host_is_required_on_http11_only() {
        let mut r = req(Version::HTTP_11, &[]);
        assert_eq!(check(&mut r, None), Err(FramingError::MissingHost));
        let mut r = req(Version::HTTP_10, &[]);
        assert_eq!(check(&mut r, None), Ok(()));
        let mut r = req(Version::HTTP_11, &[("host", "a")]);
        assert_eq!(check(&mut r, None), Ok(()));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let head: &[u8] =
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut r = req(
            Version::HTTP_11,
            &[("host", "a"), ("transfer-encoding", "chunked")],
        );
        assert_eq!(
            check(&mut r, Some(head)),
            Err(FramingError::ContentLengthAndTransferEncoding)
        );
        let head: &[u8] =
            b"POST /x HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(&mut r, Some(head)), Ok(()));
    }

    #[test]
    fn listed_content_length_becomes_one_value() {
        let mut r = req(
            Version::HTTP_11,
            &[("host", "a"), ("content-length", "5, 5")],
        );
        check(&mut r, None).expect("ok");
        let all: Vec<_> = r.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(all, [HeaderValue::from_static("5")]);
        let mut r = req(
            Version::HTTP_11,
            &[
                ("host", "a"),
                ("content-length", "7"),
                ("content-length", "7"),
            ],
        );
        check(&mut r, None).expect("ok");
        let all: Vec<_> = r.headers.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(all, [HeaderValue::from_static("7")]);
    }

    #[test]
    fn raw_head_scan() {
        assert!(raw_head_has_content_length(
            b"GET / HTTP/1.1\r\ncontent-length: 1\r\n"
        ));
        assert!(raw_head_has_content_length(
            b"GET / HTTP/1.1\r\nCONTENT-LENGTH:1\r\n"
        ));
        assert!(!raw_head_has_content_length(
            b"GET /content-length: HTTP/1.1\r\n"
        ));
        assert!(!raw_head_has_content_length(
            b"GET / HTTP/1.1\r\ncontent-lengthy: 1\r\n"
        ));
    }
}
