//! The one notion of "the path" (`tether_proxy::path`) and the header
//! scrub (`tether_proxy::headers`), fed arbitrary request targets and
//! header names. Invariants:
//! - never a panic;
//! - an accepted target's canonical form is canonical again, unchanged
//!   (so a forwarded request re-checked by a second tether agrees);
//! - the canonical path has no dot-segment, no encoded separator, no
//!   backslash, and starts with `/`;
//! - a canonical path the public-prefix test passes is still under the
//!   prefix after a lenient backend's own decoding (every escape decoded,
//!   `\` read as `/`, dot-segments resolved): what the lock check lets
//!   through as public is what the app serves as public;
//! - after the scrub, no header name a backend would fold (case, `_` for
//!   `-`) into one of the proxy's own names is left.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proxy::headers::{classify, NameClass};
use tether_proxy::path::canonical_target;

const PUBLIC: &str = "/public/";

/// What a lenient backend serves for `path`: fully percent-decoded (bytes
/// that are not UTF-8 kept as escapes), `\` as `/`, dot-segments resolved,
/// never above the root.
fn backend_view(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    let text: String = String::from_utf8_lossy(&out).replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for s in text.split('/').skip(1) {
        match s {
            "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

fuzz_target!(|data: &[u8]| {
    // First half: a request target; second half: header names, one a line.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (target, names) = data.split_at(split);

    if let Ok(result) = canonical_target(target) {
        let canon = match &result {
            Some(t) => t.clone(),
            None => String::from_utf8(target.to_vec()).expect("accepted targets are UTF-8"),
        };
        // Canonical again, unchanged.
        assert_eq!(
            canonical_target(canon.as_bytes()),
            Ok(None),
            "not idempotent: {canon:?}"
        );
        let path = canon.split('?').next().unwrap_or("");
        assert!(path.starts_with('/'), "{canon:?}");
        assert!(!path.contains('\\'), "{canon:?}");
        let lower = path.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{canon:?}");
        for seg in path.split('/') {
            assert!(seg != "." && seg != "..", "dot-segment left: {canon:?}");
        }
        // What the check lets through as public, the app serves as
        // public. (The other way round only makes the proxy stricter.)
        if path.starts_with(PUBLIC) {
            let served = backend_view(path);
            assert!(
                served.starts_with(PUBLIC),
                "public-prefix escape: {canon:?} served as {served:?}"
            );
        }
    }

    for name in names.split(|&b| b == b'\n') {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        let class = classify(&lower);
        let folded = lower.replace('_', "-");
        if folded.starts_with("x-tether-") || folded.starts_with("tether-") {
            assert_eq!(class, NameClass::Internal, "{name:?}");
        }
        if lower.contains('_') {
            assert_ne!(class, NameClass::Plain, "{name:?} would be passed on");
        }
    }
});
