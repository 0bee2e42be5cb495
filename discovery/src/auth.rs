//! Bearer-token checks for heartbeats (cluster token) and drains (admin
//! token).

use http::header::AUTHORIZATION;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// True when the request carries `Authorization: Bearer <expected>`.
///
/// The comparison runs in constant time over the token bytes, so response
/// timing does not reveal how much of a guess was right. (It does reveal
/// whether the length matched; tokens are at least 16 random characters,
/// so the length alone is no help to a guesser.)
pub fn bearer_matches(headers: &HeaderMap, expected: &Secret) -> bool {
    let Some(token) = bearer(headers) else {
        return false;
    };
    token.ct_eq(expected.expose().as_bytes()).into()
}

/// The token of an `Authorization: Bearer …` header (scheme
/// case-insensitive, as RFC 7235 says).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn accepts_only_the_exact_token() {
        let s = Secret::new("0123456789abcdef");
        assert!(bearer_matches(&headers("Bearer 0123456789abcdef"), &s));
        assert!(bearer_matches(&headers("bearer 0123456789abcdef"), &s));
        assert!(!bearer_matches(&headers("Bearer 0123456789abcdeF"), &s));
        assert!(!bearer_matches(&headers("Bearer 0123456789abcde"), &s));
        assert!(!bearer_matches(&headers("Basic 0123456789abcdef"), &s));
        assert!(!bearer_matches(&headers("Bearer"), &s));
        assert!(!bearer_matches(&headers("Bearer "), &s));
        assert!(!bearer_matches(&HeaderMap::new(), &s));
    }
}
