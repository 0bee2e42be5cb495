//! What is stored: the record's scope (where it lives), the request's
//! fingerprint (what it was for), and the stored answer with its binary
//! encoding.
//!
//! - **Scope**: SHA-256 of the verified subject and the key. The store
//!   never sees a token, a subject or a key in clear.
//! - **Fingerprint**: SHA-256 of the method, the canonical path with query
//!   (length-prefixed) and the body, in one pass as the body streams by. The canonical path is the origin-form
//!   request target exactly as sent (`/orders?x=1`; an absolute-form target
//!   is reduced to its path and query; no percent-decoding or reordering,
//!   since the app may tell those apart).
//! - **Answer**: status, the [`REPLAYED_HEADERS`] present, body.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// Response headers stored and replayed; everything else is dropped.
///
/// Kept: what describes the representation or points at the created
/// resource. Dropped on purpose: `set-cookie` (a replay must not re-issue
/// a session cookie the app may since have rotated or revoked), hop-by-hop
/// and framing headers (`connection`, `transfer-encoding`,
/// `content-length`: recomputed), `date` and `server` (the replay's own),
/// and `tether-*` (the lock protocol).
pub const REPLAYED_HEADERS: [&str; 12] = [
    "content-type",
    "content-encoding",
    "content-language",
    "content-location",
    "content-disposition",
    "location",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "link",
    "vary",
];

/// Most bytes the stored headers may take (names, values, 4 bytes of
/// lengths each); an answer with more is not stored.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields stored (values of one name count one each).
pub const MAX_HEADER_COUNT: usize = 64;
/// Bytes a record adds around its body, at most: magic, fingerprint,
/// status, header count, the headers at their largest, body length.
pub const MAX_OVERHEAD: usize = 4 + 32 + 2 + 2 + MAX_HEADER_BYTES + 4;

const MAGIC: &[u8; 4] = b"TIR1";

/// Where a record lives: SHA-256 over the subject and the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(pub [u8; 32]);

impl Scope {
    pub fn new(subject: &[u8], key: &str) -> Scope {
        let mut h = Sha256::new();
        h.update(b"tether idempotency scope v1\0");
        // Length prefixes: ("ab", "c") and ("a", "bc") differ.
        h.update((subject.len() as u64).to_be_bytes());
        h.update(subject);
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        Scope(h.finalize().into())
    }

    /// Lower-case hex, 64 characters (the Redis key suffix).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` in lower-case hex: digits written into a stack buffer
/// and appended 64 bytes at a time (not a `char` push per digit).
pub(crate) fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 128];
    for chunk in bytes.chunks(64) {
        for (i, b) in chunk.iter().enumerate() {
            buf[2 * i] = DIGITS[(b >> 4) as usize];
            buf[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        // Hex digits are ASCII: this never falls back.
        s.push_str(std::str::from_utf8(&buf[..2 * chunk.len()]).unwrap_or_default());
    }
}

/// What a request was for: method, canonical path and query, body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

/// Builds a [`Fingerprint`] while the body streams by: one SHA-256 over
/// a domain tag, the method, the length-prefixed canonical target and then
/// the body bytes as they come (no separate body digest: two compression
/// blocks for a small request instead of four, same collision resistance,
/// since every field before the body is delimited or length-prefixed).
#[derive(Clone)]
pub struct FingerprintBuilder {
    /// The state after the method and the target, to restart the body
    /// from (an upstream retry sends it again).
    head: Sha256,
    hash: Sha256,
}

impl FingerprintBuilder {
    pub fn new(method: &http::Method, uri: &http::Uri) -> FingerprintBuilder {
        let target = canonical_target(uri);
        let mut h = Sha256::new();
        h.update(b"tether idempotency fingerprint v2\0");
        h.update(method.as_str().as_bytes());
        h.update(b"\0");
        h.update((target.len() as u64).to_be_bytes());
        h.update(target.as_bytes());
        FingerprintBuilder {
            head: h.clone(),
            hash: h,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
    }

    /// Forgets the body seen so far (the request is being sent again).
    pub fn restart_body(&mut self) {
        self.hash = self.head.clone();
    }

    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.hash.finalize().into())
    }
}

/// The origin-form target: path and query as sent, `/` when empty.
pub fn canonical_target(uri: &http::Uri) -> &str {
    match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => pq.as_str(),
        _ => "/",
    }
}

/// A stored answer, as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub fingerprint: Fingerprint,
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// A record from the store that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stored idempotency record is corrupt")]
pub struct CorruptRecord;

impl StoredResponse {
    /// Binary encoding: `TIR1`, fingerprint (32), status (u16 BE), header
    /// count (u16 BE), per header name length (u16) + name + value length
    /// (u16) + value, body length (u32 BE) + body.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        b.put_slice(MAGIC);
        b.put_slice(&self.fingerprint.0);
        b.put_u16(self.status);
        b.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            b.put_u16(name.as_str().len() as u16);
            b.put_slice(name.as_str().as_bytes());
            b.put_u16(value.len() as u16);
            b.put_slice(value.as_bytes());
        }
        b.put_u32(self.body.len() as u32);
        b.put_slice(&self.body);
        b.freeze()
    }

    pub fn encoded_len(&self) -> usize {
        4 + 32
            + 2
            + 2
            + self
                .headers
                .iter()
                .map(|(n, v)| 4 + n.as_str().len() + v.len())
                .sum::<usize>()
            + 4
            + self.body.len()
    }

    pub fn decode(mut b: Bytes) -> Result<StoredResponse, CorruptRecord> {
        fn take(b: &mut Bytes, n: usize) -> Result<Bytes, CorruptRecord> {
            if b.len() < n {
                return Err(CorruptRecord);
            }
            Ok(b.split_to(n))
        }
        fn u16_(b: &mut Bytes) -> Result<u16, CorruptRecord> {
            let s = take(b, 2)?;
            Ok(u16::from_be_bytes([s[0], s[1]]))
        }
        if take(&mut b, 4)?.as_ref() != MAGIC {
            return Err(CorruptRecord);
        }
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&take(&mut b, 32)?);
        let status = u16_(&mut b)?;
        if !(100..=999).contains(&status) {
            return Err(CorruptRecord);
        }
        let count = u16_(&mut b)? as usize;
        if count > MAX_HEADER_COUNT {
            return Err(CorruptRecord);
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let n = u16_(&mut b)? as usize;
            let name = HeaderName::from_bytes(&take(&mut b, n)?).map_err(|_| CorruptRecord)?;
            let n = u16_(&mut b)? as usize;
            let value =
                HeaderValue::from_maybe_shared(take(&mut b, n)?).map_err(|_| CorruptRecord)?;
            headers.push((name, value));
        }
        let s = take(&mut b, 4)?;
        let len = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        let body = take(&mut b, len)?;
        if !b.is_empty() {
            return Err(CorruptRecord);
        }
        Ok(StoredResponse {
            fingerprint: Fingerprint(fp),
            status,
            headers,
            body,
        })
    }
}

/// An upstream answer encoded as it arrives, in [`StoredResponse::encode`]'s
/// format: the kept headers are written once when the head comes, body
/// chunks are appended, and [`RecordWriter::finish`] fills in the
/// fingerprint and the body length. One buffer, no intermediate header
/// list and no second copy when storing.
#[derive(Debug)]
pub struct RecordWriter {
    buf: BytesMut,
    /// Where the body starts (its u32 length is the 4 bytes before).
    body_at: usize,
}

impl RecordWriter {
    /// Starts a record for an answer with this status and these headers
    /// (the [`REPLAYED_HEADERS`] among them are kept), with room for
    /// `body_capacity` body bytes. `None` when the kept headers exceed
    /// [`MAX_HEADER_BYTES`] or [`MAX_HEADER_COUNT`], as for
    /// [`replayed_headers`].
    pub fn new(status: u16, headers: &http::HeaderMap, body_capacity: usize) -> Option<Self> {
        // Pass 1: which kept names are present, how many values, how many
        // bytes (the limits are checked as `replayed_headers` does).
        let mut present = 0u16;
        let (mut count, mut bytes) = (0usize, 0usize);
        for (name, value) in headers {
            if let Some(rank) = REPLAYED_NAMES.iter().position(|n| n == name) {
                bytes += 4 + name.as_str().len() + value.len();
                if bytes > MAX_HEADER_BYTES || count == MAX_HEADER_COUNT {
                    return None;
                }
                count += 1;
                present |= 1 << rank;
            }
        }
        // Pass 2: write them in REPLAYED_HEADERS order.
        let mut buf = BytesMut::with_capacity(4 + 32 + 2 + 2 + bytes + 4 + body_capacity);
        buf.put_slice(MAGIC);
        buf.put_slice(&[0; 32]);
        buf.put_u16(status);
        buf.put_u16(count as u16);
        for (rank, name) in REPLAYED_NAMES.iter().enumerate() {
            if present & (1 << rank) == 0 {
                continue;
            }
            for value in headers.get_all(name) {
                buf.put_u16(name.as_str().len() as u16);
                buf.put_slice(name.as_str().as_bytes());
                buf.put_u16(value.len() as u16);
                buf.put_slice(value.as_bytes());
            }
        }
        buf.put_u32(0);
        let body_at = buf.len();
        Some(RecordWriter { buf, body_at })
    }

    /// Body bytes so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.body_at
    }

    pub fn push_body(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The encoded record, for the request with this fingerprint.
    pub fn finish(mut self, fingerprint: &Fingerprint) -> Bytes {
        let len = self.body_len() as u32;
        self.buf[4..36].copy_from_slice(&fingerprint.0);
        self.buf[self.body_at - 4..self.body_at].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

/// Whether an upstream status may be stored and replayed.
///
/// Stored: 2xx, 3xx, and 4xx except 408 (timeout), 409 (conflict: often a
/// concurrency clash the app wants retried), 425 (too early) and 429 (rate
/// limited): those say "try again", so replaying them would pin the
/// failure for a whole TTL. Not stored: 1xx (not final) and 5xx (the app
/// failed; a retry should reach it again).
pub fn storable_status(status: u16) -> bool {
    match status {
        200..=399 => true,
        408 | 409 | 425 | 429 => false,
        400..=499 => true,
        _ => false,
    }
}

/// [`REPLAYED_HEADERS`] as header names (all standard ones: comparing
/// one is an enum comparison, not a string match).
const REPLAYED_NAMES: [HeaderName; 12] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    http::header::CONTENT_LOCATION,
    http::header::CONTENT_DISPOSITION,
    http::header::LOCATION,
    http::header::ETAG,
    http::header::LAST_MODIFIED,
    http::header::CACHE_CONTROL,
    http::header::EXPIRES,
    http::header::LINK,
    http::header::VARY,
];

/// The [`REPLAYED_HEADERS`] of an upstream answer, in the order of
/// [`REPLAYED_HEADERS`] (values of one name in the order sent), or `None`
/// when they exceed [`MAX_HEADER_BYTES`] or [`MAX_HEADER_COUNT`] (the
/// answer is then not stored: a replay without, say, its `location` would
/// be wrong).
///
/// One pass over the answer's few headers, not one lookup per kept name.
pub fn replayed_headers(headers: &http::HeaderMap) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let rank = |name: &HeaderName| REPLAYED_NAMES.iter().position(|n| n == name);
    let mut out = Vec::new();
    let mut bytes = 0;
    for (name, value) in headers {
        if rank(name).is_none() {
            continue;
        }
        bytes += 4 + name.as_str().len() + value.len();
        if bytes > MAX_HEADER_BYTES || out.len() == MAX_HEADER_COUNT {
            return None;
        }
        out.push((name.clone(), value.clone()));
    }
    // Stable: the values of one name keep their order.
    out.sort_by_key(|(name, _)| rank(name));
    Some(out)
}
