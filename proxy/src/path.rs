//! The one notion of "the path" (docs/design.md §4): every decision the
//! proxy makes on a request's path — reserved endpoint, public prefix,
//! the hop marker's signature — and the request line the app receives use
//! the same canonical path, settled here before anything else looks at it.
//!
//! Canonical means (RFC 3986 §6.2.2):
//! - percent-escapes of unreserved characters (`A–Z a–z 0–9 - . _ ~`) are
//!   decoded (`/publ%69c` is `/public`, `%2e` is `.`);
//! - dot-segments are removed (§5.2.4: `/a/./b/../c` is `/a/c`);
//! - the request target is in origin form (`/path?query`); an
//!   absolute-form target (`http://host/path`) is reduced to it.
//!
//! Refused (the client gets `400 invalid_path`), because backends disagree
//! on what they mean and one of them could read a public path as a
//! protected one:
//! - a `..` that climbs above the root (`/../etc/passwd`);
//! - an encoded separator: `%2F`, `%5C` (a backend that decodes it splits
//!   the segment differently from the check);
//! - a backslash (some servers read it as `/`);
//! - a dot-segment carrying parameters (`..;x`: Tomcat-style servers read
//!   it as `..`);
//! - an escape of a control character (`%00`–`%1F`, `%7F`), a malformed
//!   escape (`%zz`, `%u002e`), a double-encoded dot or separator
//!   (`%252e`, `%252f`, `%255c`);
//! - a target that is not valid UTF-8, or not a path at all (`*`).
//!
//! The query is passed on untouched. A path needing none of this (no `%`,
//! no `\`, no `/.`: nearly every request) is checked in one scan and not
//! copied.

use std::borrow::Cow;

/// Why a request target was refused; [`PathError::detail`] is the text the
/// client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin or absolute form (`*`, an authority, a bare word).
    NotAPath,
    /// The target's bytes are not valid UTF-8.
    NotUtf8,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`.
    EncodedSeparator,
    /// `%00`–`%1F` or `%7F`.
    EncodedControl,
    /// `%25` followed by the escape of a dot or a separator.
    DoubleEncoded,
    /// A literal `\`.
    Backslash,
    /// `..` above the root.
    AboveRoot,
    /// A dot-segment with `;` parameters.
    DotSegmentParams,
}

impl PathError {
    pub fn detail(self) -> &'static str {
        match self {
            PathError::NotAPath => "the request target must be a path starting with '/'",
            PathError::NotUtf8 => "the request path must be ASCII; percent-encode other bytes",
            PathError::BadEscape => "the request path has a '%' not followed by two hex digits",
            PathError::EncodedSeparator => {
                "the request path has an encoded '/' or '\\' (%2F, %5C), which is refused"
            }
            PathError::EncodedControl => {
                "the request path has an encoded control character, which is refused"
            }
            PathError::DoubleEncoded => {
                "the request path has a double-encoded dot or separator, which is refused"
            }
            PathError::Backslash => "the request path has a '\\', which is refused",
            PathError::AboveRoot => "the request path climbs above the root with '..'",
            PathError::DotSegmentParams => {
                "the request path has a dot-segment with ';' parameters, which is refused"
            }
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for PathError {}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` at `s[i]` stands for.
fn escape_at(s: &[u8], i: usize) -> Result<u8, PathError> {
    match (
        s.get(i + 1).copied().and_then(hex),
        s.get(i + 2).copied().and_then(hex),
    ) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadEscape),
    }
}

/// The canonical form of `path` (the path component only, starting with
/// `/`): borrowed when it is already canonical, which is the common case.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    let mut needs_work = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' => needs_work = true,
            b'\\' => return Err(PathError::Backslash),
            b'.' if b[i - 1] == b'/' => needs_work = true,
            0x00..=0x20 | 0x7f..=0xff => return Err(PathError::NotUtf8),
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }

    // 1. Decode unreserved escapes; refuse the dangerous ones.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            decoded.push(b[i]);
            i += 1;
            continue;
        }
        let v = escape_at(b, i)?;
        match v {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
            // Kept as is; checked for double encoding once all is decoded.
            b'%' => decoded.extend_from_slice(b"%25"),
            v if unreserved(v) => decoded.push(v),
            _ => {
                // Kept escaped, hex digits upper-cased (§6.2.2.1).
                decoded.push(b'%');
                decoded.push(b[i + 1].to_ascii_uppercase());
                decoded.push(b[i + 2].to_ascii_uppercase());
            }
        }
        i += 3;
    }

    // `%25` then two hex digits (`%252e`, also when the digits were
    // themselves escaped, `%25%32%65`): decoded once more by a lenient
    // backend, it must not turn into a dot or a separator.
    for (at, _) in decoded.iter().enumerate().filter(|(_, &c)| c == b'%') {
        if decoded.get(at + 1..at + 3) == Some(b"25") {
            if let Ok(inner) = escape_at(&decoded, at + 2) {
                if matches!(inner, b'.' | b'/' | b'\\') {
                    return Err(PathError::DoubleEncoded);
                }
            }
        }
    }

    // 2. Remove dot-segments (§5.2.4), refusing a climb above the root.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&c| c == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        let bare = seg.split(|&c| c == b';').next().unwrap_or(seg);
        let dot = bare == b"." || bare == b"..";
        if dot && bare.len() != seg.len() {
            return Err(PathError::DotSegmentParams);
        }
        match *seg {
            b"." => trailing_slash = n == last,
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut canon = Vec::with_capacity(decoded.len());
    for s in &out {
        canon.push(b'/');
        canon.extend_from_slice(s);
    }
    if trailing_slash || canon.is_empty() {
        canon.push(b'/');
    }
    if canon == b {
        return Ok(Cow::Borrowed(path));
    }
    // Only ASCII went in (checked above), so this cannot fail.
    String::from_utf8(canon)
        .map(Cow::Owned)
        .map_err(|_| PathError::NotUtf8)
}

/// The request target the proxy works with and forwards: `Ok(None)` when
/// `raw` (Pingora's `raw_path()`, the target as it will go on the wire) is
/// already a canonical origin-form target, else the new origin-form target
/// (canonical path plus the untouched query).
pub fn canonical_target(raw: &[u8]) -> Result<Option<String>, PathError> {
    let raw = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
    let (target, reduced) = if raw.starts_with('/') {
        (raw, false)
    } else {
        // Absolute form: `scheme://authority/path?query`. Pingora has
        // already checked the authority against `Host`; keep the rest.
        let Some((_, rest)) = raw.split_once("://") else {
            return Err(PathError::NotAPath);
        };
        match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes()[at] == b'/' => (&rest[at..], true),
            Some(at) => (&rest[at..], true),
            None => ("", true),
        }
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    if let Some(q) = query {
        if q.bytes().any(|c| c <= 0x20 || c >= 0x7f) {
            return Err(PathError::NotUtf8);
        }
    }
    let canon = canonical(path)?;
    if !reduced && matches!(canon, Cow::Borrowed(_)) {
        return Ok(None);
    }
    let mut t = canon.into_owned();
    if let Some(q) = query {
        t.push('?');
        t.push_str(q);
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        canonical(p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/public/x.css",
            "/a..b/c",
            "/a/.hidden",
            "/x;y=1",
            "//a",
        ] {
            assert!(
                matches!(canonical(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/public/../secret"), "/secret");
        assert_eq!(ok("/public/./../secret"), "/secret");
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/public//../secret"), "/public/secret");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(ok("/public/%2e%2e/secret"), "/secret");
        assert_eq!(ok("/public/%2E%2E/secret"), "/secret");
        assert_eq!(ok("/public/.%2e/secret"), "/secret");
        assert_eq!(ok("/publ%69c/x"), "/public/x");
        assert_eq!(ok("/%7Euser"), "/~user");
        // Reserved and non-ASCII stay escaped, hex upper-cased.
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/100%25"), "/100%25");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathError::*;
        let cases = [
            ("/..", AboveRoot),
            ("/../etc/passwd", AboveRoot),
            ("/public/../../secret", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("/public/..%2fsecret", EncodedSeparator),
            ("/public/..%2Fsecret", EncodedSeparator),
            ("/public%2f..%2fsecret", EncodedSeparator),
            ("/public/..%5csecret", EncodedSeparator),
            ("/public\\..\\secret", Backslash),
            ("/public/..;/secret", DotSegmentParams),
            ("/public/.;x/secret", DotSegmentParams),
            ("/public/%2e%2e;x/secret", DotSegmentParams),
            ("/public/%252e%252e/secret", DoubleEncoded),
            ("/public/..%252fsecret", DoubleEncoded),
            ("/public/%25%32%65%25%32%65/secret", DoubleEncoded),
            ("/public/%25%32e/secret", DoubleEncoded),
            ("/a%00b", EncodedControl),
            ("/a%0d%0ab", EncodedControl),
            ("/a%7f", EncodedControl),
            ("/a%zz", BadEscape),
            ("/a%2", BadEscape),
            ("/a%", BadEscape),
            ("/public/%u002e%u002e/secret", BadEscape),
            ("*", NotAPath),
            ("", NotAPath),
            ("public/x", NotAPath),
            ("/a b", NotUtf8),
            ("/caf\u{e9}", NotUtf8),
        ];
        for (p, want) in cases {
            assert_eq!(canonical(p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn canonical_is_idempotent() {
        for p in [
            "/public/../secret",
            "/a/%2e/b",
            "/a%3fb",
            "/a/b/..",
            "/x/%41/./y/",
        ] {
            let once = ok(p);
            assert!(matches!(canonical(&once), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(canonical_target(b"/a?x=1"), Ok(None));
        assert_eq!(
            canonical_target(b"/public/../secret?x=/../y"),
            Ok(Some("/secret?x=/../y".to_owned()))
        );
        assert_eq!(
            canonical_target(b"http://h:1/a/./b?q"),
            Ok(Some("/a/b?q".to_owned()))
        );
        assert_eq!(canonical_target(b"http://h:1"), Ok(Some("/".to_owned())));
        assert_eq!(canonical_target(b"http://h?q"), Ok(Some("/?q".to_owned())));
        assert_eq!(canonical_target(b"*"), Err(PathError::NotAPath));
        assert_eq!(canonical_target(b"/a\xff"), Err(PathError::NotUtf8));
    }

    /// What a lenient backend serves: every escape decoded, `\\` as `/`,
    /// dot-segments resolved (the `request_path` fuzz target's model).
    fn backend_view(path: &str) -> String {
        let b = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        let text = String::from_utf8_lossy(&out).replace('\\', "/");
        let mut segs: Vec<&str> = Vec::new();
        for seg in text.split('/').skip(1) {
            match seg {
                "." => {}
                ".." => {
                    segs.pop();
                }
                seg => segs.push(seg),
            }
        }
        format!("/{}", segs.join("/"))
    }

    /// The fuzz target's invariants over generated targets built from the
    /// characters that matter (a deterministic generator, so a failure
    /// reproduces).
    #[test]
    fn generated_targets_keep_the_invariants() {
        const ALPHABET: &[u8] = b"/./..%2e%2E%2f%5c%25%32;?ab\\0u";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let mut t = b"/public/".to_vec();
            for _ in 0..len {
                t.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            let Ok(result) = canonical_target(&t) else {
                continue;
            };
            let canon = result.unwrap_or_else(|| String::from_utf8(t.clone()).expect("utf-8"));
            assert_eq!(canonical_target(canon.as_bytes()), Ok(None), "{canon:?}");
            let path = canon.split('?').next().unwrap_or("");
            assert!(path.starts_with('/') && !path.contains('\\'), "{canon:?}");
            assert!(path.split('/').all(|s| s != "." && s != ".."), "{canon:?}");
            if path.starts_with("/public/") {
                let served = backend_view(path);
                assert!(
                    served.starts_with("/public/"),
                    "{canon:?} served as {served:?}"
                );
            }
        }
    }
}
