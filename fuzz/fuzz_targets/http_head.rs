//! The request-head scanner behind the slowloris deadline
//! (`tether_proxy::guard::HeadScanner`): fed the same bytes in any pieces,
//! it finds the end of the head exactly where a line-by-line reading of
//! the whole input does, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proxy::guard::HeadScanner;

/// Reference: split into '\n'-terminated lines; a line that is empty or a
/// lone "\r" after at least one non-blank line ends the head. Returns the
/// offset just past that line's '\n'.
fn reference(bytes: &[u8]) -> Option<usize> {
    let mut seen = false;
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            let line = &bytes[start..i];
            if line.is_empty() || line == b"\r" {
                if seen {
                    return Some(i + 1);
                }
            } else {
                seen = true;
            }
            start = i + 1;
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    // The first byte seeds the piece sizes (1..=16 bytes, cycling).
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let want = reference(body);
    let mut s = HeadScanner::default();
    let mut at = 0;
    let mut size = usize::from(seed % 16) + 1;
    let mut found = None;
    while at < body.len() {
        let end = (at + size).min(body.len());
        if s.feed(&body[at..end]) {
            found = Some(end);
            break;
        }
        at = end;
        size = size % 16 + 1;
    }
    match (want, found) {
        (None, None) => {}
        // The scanner reports at the end of the piece that holds the end.
        (Some(w), Some(f)) => assert!(w <= f && f - w < 16, "want {w}, got {f}"),
        (w, f) => panic!("want {w:?}, got {f:?}"),
    }
    // In one piece it agrees too.
    assert_eq!(HeadScanner::default().feed(body), want.is_some());
});
