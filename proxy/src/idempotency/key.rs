//! The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header-07).
//!
//! The draft defines the value as a Structured Field Item of type String
//! (RFC 8941 §3.3.3): `"` *( %x20-21 / %x23-5B / %x5D-7E / `\"` / `\\` ) `"`.
//!
//! For interoperability with clients written against Stripe-style APIs,
//! which send the key unquoted (`Idempotency-Key: 8e03978e-40d5-…`), a
//! *bare* value is accepted too: visible ASCII (%x21-7E) without `"`, `\`,
//! `,` or `;`. `"abc"` and `abc` name the same key. Structured-field
//! parameters (`"abc";p=1`) are refused rather than ignored: a client that
//! sends them expects them to mean something, and this proxy gives them no
//! meaning.
//!
//! Limits: the key (after unescaping) is 1 to [`MAX_KEY_LEN`] characters of
//! printable ASCII. A header present twice is refused (ambiguous: a proxy in
//! front and the app behind could each read a different one).

use http::{HeaderMap, HeaderName};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// [`HEADER`] as a header name: looking it up skips parsing the name.
pub const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);
/// Longest accepted key, in characters (after unescaping).
pub const MAX_KEY_LEN: usize = 255;

/// A syntactically valid key: 1..=255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a key was refused. Each names the problem for the `400` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Idempotency-Key header is sent more than once")]
    Repeated,
    #[error("the Idempotency-Key is empty")]
    Empty,
    #[error("the Idempotency-Key is longer than {MAX_KEY_LEN} characters ({len} bytes sent)")]
    TooLong { len: usize },
    #[error("the Idempotency-Key has a non-ASCII byte at position {position}")]
    NonAscii { position: usize },
    #[error("the Idempotency-Key has a control character at position {position}")]
    ControlCharacter { position: usize },
    #[error("the Idempotency-Key string is not terminated by '\"'")]
    Unterminated,
    #[error("the Idempotency-Key has an invalid escape at position {position} (only \\\" and \\\\ are allowed)")]
    BadEscape { position: usize },
    #[error(
        "the Idempotency-Key has characters after its closing '\"' (parameters are not accepted)"
    )]
    TrailingCharacters,
    #[error("the Idempotency-Key has '{character}' at position {position}; quote the key as a structured-field string")]
    InvalidBareCharacter { character: char, position: usize },
}

/// The key of a request, from its headers: `Ok(None)` when absent.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, KeyError> {
    let mut all = headers.get_all(&HEADER_NAME).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(KeyError::Repeated);
    }
    parse(value.as_bytes()).map(Some)
}

/// Parses one header value (surrounding spaces and tabs are ignored, as
/// HTTP field values are trimmed).
pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let v = trim(raw);
    // The common case first: a bare key of 1..=255 allowed characters
    // (UUIDs, ULIDs, Stripe-style keys) is the key itself, checked in one
    // pass without decoding. Everything else, errors included, takes the
    // path below, which names the problem.
    if (1..=MAX_KEY_LEN).contains(&v.len()) && v.iter().all(|&b| BARE[b as usize]) {
        if let Ok(key) = std::str::from_utf8(v) {
            return Ok(IdempotencyKey(key.to_owned()));
        }
    }
    parse_general(v)
}

/// Any trimmed value: quoted or bare, or the error that names what is
/// wrong with it. (`parse` gives the same answer for every input; it only
/// skips this for plain bare keys.)
fn parse_general(v: &[u8]) -> Result<IdempotencyKey, KeyError> {
    // Worst case, every character of a quoted key is escaped: 2 per
    // character plus the quotes. Anything longer is refused before any
    // per-byte work.
    if v.len() > 2 * MAX_KEY_LEN + 2 {
        return Err(KeyError::TooLong { len: v.len() });
    }
    if let Some(position) = v.iter().position(|b| !b.is_ascii()) {
        return Err(KeyError::NonAscii { position });
    }
    if let Some(position) = v.iter().position(|&b| b < 0x20 || b == 0x7f) {
        return Err(KeyError::ControlCharacter { position });
    }
    let key = match v.first() {
        None => return Err(KeyError::Empty),
        Some(b'"') => quoted(v)?,
        Some(_) => bare(v)?,
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong { len: v.len() });
    }
    Ok(IdempotencyKey(key))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// An sf-string; `v` starts with `"` and is printable ASCII (checked).
fn quoted(v: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(v.len());
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' => {
                match v.get(i + 1) {
                    Some(&c @ (b'"' | b'\\')) => out.push(c as char),
                    Some(_) => return Err(KeyError::BadEscape { position: i }),
                    None => return Err(KeyError::Unterminated),
                }
                i += 2;
            }
            b'"' => {
                if i + 1 != v.len() {
                    return Err(KeyError::TrailingCharacters);
                }
                return Ok(out);
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Err(KeyError::Unterminated)
}

/// The bytes a bare key may hold: visible ASCII (%x21-7E) except `"`,
/// `\\`, `,` and `;` (what [`bare`] accepts).
static BARE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'"' | b'\\' | b',' | b';');
        b += 1;
    }
    t
};

/// A bare (unquoted) key; `v` is printable ASCII (checked).
fn bare(v: &[u8]) -> Result<String, KeyError> {
    for (position, &b) in v.iter().enumerate() {
        if matches!(b, b' ' | b'"' | b'\\' | b',' | b';') {
            return Err(KeyError::InvalidBareCharacter {
                character: b as char,
                position,
            });
        }
    }
    // Printable ASCII only, checked above.
    Ok(v.iter().map(|&b| b as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path of `parse` answers exactly as the general parser:
    /// every single byte, every pair of printable bytes, and lengths
    /// around the limit.
    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        let mut inputs: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for a in 0x20..0x7fu8 {
            for b in 0x20..0x7fu8 {
                inputs.push(vec![a, b]);
            }
        }
        for n in [MAX_KEY_LEN - 1, MAX_KEY_LEN, MAX_KEY_LEN + 1] {
            inputs.push(vec![b'k'; n]);
            let mut q = vec![b'"'];
            q.extend(std::iter::repeat_n(b'k', n));
            q.push(b'"');
            inputs.push(q);
        }
        inputs.push(b"8e03978e-40d5-43e8-bc93-6894a57f9324".to_vec());
        inputs.push("cl\u{e9}".as_bytes().to_vec());
        for v in &inputs {
            assert_eq!(parse(v), parse_general(trim(v)), "input {v:?}");
        }
    }
}
