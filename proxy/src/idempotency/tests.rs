use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};

use super::config::{self, FileIdempotency};
use super::key::{self, KeyError, MAX_KEY_LEN};
use super::problem;
use super::record::{self, FingerprintBuilder, Scope, StoredResponse};
use super::store::memory::{queue_capacity, MemoryStore, WAYS};
use super::store::{ClaimResult, ClaimToken, IdempotencyStore, ManualClock, StoreError};
use super::*;

// ------------------------------------------------------------------ keys

#[test]
fn keys_in_both_forms_parse_to_the_same_key() {
    let quoted = key::parse(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#).unwrap();
    let bare = key::parse(b"8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
    assert_eq!(quoted, bare);
    assert_eq!(quoted.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
    // Escapes and inner spaces in a quoted key; outer whitespace trimmed.
    let k = key::parse(br#"  "a \"b\" \\c"	"#).unwrap();
    assert_eq!(k.as_str(), r#"a "b" \c"#);
}

#[test]
fn key_length_limit_is_255_characters() {
    let ok = "k".repeat(MAX_KEY_LEN);
    assert!(key::parse(ok.as_bytes()).is_ok());
    assert!(key::parse(format!("\"{ok}\"").as_bytes()).is_ok());
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert!(matches!(
        key::parse(long.as_bytes()),
        Err(KeyError::TooLong { .. })
    ));
    // 255 characters written with escapes are still 255.
    let escaped = format!("\"{}\"", "\\\\".repeat(MAX_KEY_LEN));
    assert_eq!(key::parse(escaped.as_bytes()).unwrap().as_str().len(), 255);
}

#[test]
fn hostile_keys_are_refused_with_a_named_problem() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "empty"),
        (b"\"\"".to_vec(), "empty"),
        (b"   ".to_vec(), "empty"),
        (vec![b'a'; 10 * 1024], "longer than 255"),
        (
            {
                let mut v = b"\"".to_vec();
                v.extend(vec![b'a'; 10 * 1024]);
                v.push(b'"');
                v
            },
            "longer than 255",
        ),
        (b"\"ab\x01c\"".to_vec(), "control character at position 3"),
        (b"ab\x00c".to_vec(), "control character at position 2"),
        (b"a\tb".to_vec(), "control character at position 1"),
        (b"ab\x7fc".to_vec(), "control character at position 2"),
        (
            "\"caf\u{e9}\"".as_bytes().to_vec(),
            "non-ASCII byte at position 4",
        ),
        (vec![b'k', 0xff, b'k'], "non-ASCII byte at position 1"),
        (b"\"abc".to_vec(), "not terminated"),
        (b"\"abc\\".to_vec(), "not terminated"),
        (b"\"a\\nb\"".to_vec(), "invalid escape at position 2"),
        (b"\"abc\";p=1".to_vec(), "after its closing"),
        (b"\"abc\" \"def\"".to_vec(), "after its closing"),
        (b"abc def".to_vec(), "' ' at position 3"),
        (b"abc,def".to_vec(), "',' at position 3"),
        (b"abc;p=1".to_vec(), "';' at position 3"),
    ];
    for (raw, expected) in cases {
        let err = key::parse(&raw).expect_err(&format!("{raw:?} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains(expected),
            "{raw:?}: {text:?} should mention {expected:?}"
        );
        // The problem body carries the same text.
        let p = problem::key_malformed(&err);
        assert_eq!(p.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["detail"], text.as_str());
    }
}

#[test]
fn a_repeated_key_header_is_refused() {
    let mut h = HeaderMap::new();
    assert_eq!(key::from_headers(&h), Ok(None));
    h.append(key::HEADER, HeaderValue::from_static("\"a\""));
    assert!(key::from_headers(&h).unwrap().is_some());
    h.append(key::HEADER, HeaderValue::from_static("\"b\""));
    assert_eq!(key::from_headers(&h), Err(KeyError::Repeated));
}

// ---------------------------------------------------------------- records

fn fp(method: Method, uri: &str, chunks: &[&[u8]]) -> record::Fingerprint {
    let mut b = FingerprintBuilder::new(&method, &uri.parse::<Uri>().unwrap());
    for c in chunks {
        b.update(c);
    }
    b.finish()
}

#[test]
fn fingerprints_cover_method_path_query_and_body_not_chunking() {
    let base = fp(Method::POST, "/orders?x=1", &[b"{\"a\":1}"]);
    assert_eq!(base, fp(Method::POST, "/orders?x=1", &[b"{\"a\"", b":1}"]));
    assert_eq!(
        base,
        fp(
            Method::POST,
            "http://example.com/orders?x=1",
            &[b"{\"a\":1}"]
        )
    );
    assert_ne!(base, fp(Method::PATCH, "/orders?x=1", &[b"{\"a\":1}"]));
    assert_ne!(base, fp(Method::POST, "/orders?x=2", &[b"{\"a\":1}"]));
    assert_ne!(base, fp(Method::POST, "/orders", &[b"{\"a\":1}"]));
    assert_ne!(base, fp(Method::POST, "/orders?x=1", &[b"{\"a\":2}"]));
}

#[test]
fn scopes_separate_subjects_and_keys() {
    let a = Scope::new(b"alice", "k1");
    assert_eq!(a, Scope::new(b"alice", "k1"));
    assert_ne!(a, Scope::new(b"bob", "k1"));
    assert_ne!(a, Scope::new(b"alice", "k2"));
    // Length-prefixed: no ambiguity at the boundary.
    assert_ne!(Scope::new(b"ab", "c"), Scope::new(b"a", "bc"));
    assert_eq!(a.hex().len(), 64);
    assert!(!a.hex().contains("alice"));
}

fn stored(status: u16, body: &'static [u8]) -> StoredResponse {
    StoredResponse {
        fingerprint: fp(Method::POST, "/orders", &[b"x"]),
        status,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                http::header::LOCATION,
                HeaderValue::from_static("/orders/7"),
            ),
        ],
        body: Bytes::from_static(body),
    }
}

#[test]
fn records_round_trip_and_corrupt_ones_are_refused() {
    let r = stored(201, b"{\"id\":7}");
    let enc = r.encode();
    assert_eq!(enc.len(), r.encoded_len());
    assert_eq!(StoredResponse::decode(enc.clone()).unwrap(), r);
    let empty = stored(204, b"");
    assert_eq!(StoredResponse::decode(empty.encode()).unwrap(), empty);
    // Truncated at every length, one trailing byte, a wrong magic.
    for n in 0..enc.len() {
        assert!(
            StoredResponse::decode(enc.slice(..n)).is_err(),
            "cut at {n}"
        );
    }
    let mut longer = enc.to_vec();
    longer.push(0);
    assert!(StoredResponse::decode(Bytes::from(longer)).is_err());
    let mut magic = enc.to_vec();
    magic[0] = b'X';
    assert!(StoredResponse::decode(Bytes::from(magic)).is_err());
}

#[test]
fn which_statuses_are_stored() {
    for s in [200, 201, 204, 301, 303, 400, 401, 403, 404, 410, 422] {
        assert!(record::storable_status(s), "{s}");
    }
    for s in [100, 101, 408, 409, 425, 429, 500, 502, 503, 504] {
        assert!(!record::storable_status(s), "{s}");
    }
}

#[test]
fn replayed_headers_keep_the_representation_not_cookies() {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("location", HeaderValue::from_static("/orders/7"));
    h.insert("set-cookie", HeaderValue::from_static("sid=abc"));
    h.insert("tether-relock", HeaderValue::from_static("x"));
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("x-request-id", HeaderValue::from_static("r1"));
    let kept = record::replayed_headers(&h).unwrap();
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["content-type", "location"]);
    // Too many bytes of kept headers: not storable at all.
    let mut big = HeaderMap::new();
    for i in 0..3 {
        big.append(
            "link",
            HeaderValue::from_str(&format!("<{}>", "l".repeat(8000 + i))).unwrap(),
        );
    }
    assert!(record::replayed_headers(&big).is_none());
}

// ---------------------------------------------------------------- problems

#[test]
fn problem_bodies_follow_rfc_9457() {
    let cases = [
        (problem::key_missing(), 400, "idempotency-key-missing", None),
        (
            problem::key_malformed(&KeyError::Empty),
            400,
            "idempotency-key-malformed",
            None,
        ),
        (
            problem::in_flight(),
            409,
            "idempotency-key-in-flight",
            Some(1),
        ),
        (problem::key_reused(), 422, "idempotency-key-reused", None),
        (
            problem::store_unavailable(),
            503,
            "idempotency-store-unavailable",
            Some(2),
        ),
    ];
    for (p, status, type_end, retry) in cases {
        assert_eq!(p.status, status);
        assert_eq!(p.retry_after, retry);
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 4, "{v}");
        assert!(v["type"].as_str().unwrap().ends_with(type_end));
        assert!(!v["title"].as_str().unwrap().is_empty());
        assert_eq!(v["status"], status);
        assert!(!v["detail"].as_str().unwrap().is_empty());
        let header = phases::problem_header(&p).unwrap();
        assert_eq!(header.status.as_u16(), status);
        assert_eq!(header.headers["content-type"], "application/problem+json");
        assert_eq!(
            header.headers["content-length"],
            p.body.len().to_string().as_str()
        );
        assert_eq!(header.headers.get("retry-after").is_some(), retry.is_some());
    }
}

// ------------------------------------------------------------------ config

#[test]
fn the_default_table_is_valid_and_enabled() {
    let c = config::validate(&FileIdempotency::default()).unwrap();
    assert!(c.enabled);
    assert_eq!(c.methods, [Method::POST, Method::PATCH]);
    assert_eq!(c.ttl, Duration::from_secs(86_400));
    assert_eq!(c.in_flight_ttl, Duration::from_secs(60));
    assert_eq!(c.max_stored_response_bytes, 64 * 1024);
    assert_eq!(c.on_store_error, OnStoreError::Reject);
    assert!(matches!(c.store, StoreConfig::Memory { .. }));
    let parsed = config::parse_table("enabled = false").unwrap();
    assert!(!parsed.enabled);
}

#[test]
fn a_redis_table_parses_and_hides_its_password() {
    let c = config::parse_table(
        r#"
        enabled = true
        methods = ["POST", "PUT"]
        required_prefixes = ["/orders"]
        on_store_error = "forward"
        [store]
        kind = "redis"
        url = "redis://:hunter2secret@127.0.0.1:6379/0"
        timeout_ms = 150
        "#,
    )
    .unwrap();
    let StoreConfig::Redis {
        url,
        key_prefix,
        timeout,
    } = &c.store
    else {
        panic!("redis expected");
    };
    assert_eq!(key_prefix, config::DEFAULT_KEY_PREFIX);
    assert_eq!(*timeout, Duration::from_millis(150));
    assert!(url.expose().contains("hunter2secret"));
    assert!(!format!("{url} {c:?}").contains("hunter2secret"));
    assert_eq!(c.on_store_error, OnStoreError::Forward);
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        ("surprise = 1", "unknown field"),
        ("methods = []", "idempotency.methods"),
        ("methods = [\"GET\"]", "idempotency.methods = \"GET\""),
        ("methods = [\"post\"]", "idempotency.methods = \"post\""),
        (
            "required_prefixes = [\"orders\"]",
            "idempotency.required_prefixes",
        ),
        ("ttl_seconds = 0", "idempotency.ttl_seconds = 0"),
        (
            "in_flight_ttl_seconds = 120\nttl_seconds = 60",
            "idempotency.in_flight_ttl_seconds = 120",
        ),
        (
            "max_stored_response_bytes = 0",
            "idempotency.max_stored_response_bytes",
        ),
        ("on_store_error = \"ignore\"", "idempotency.on_store_error"),
        (
            "[store]\nkind = \"disk\"",
            "idempotency.store.kind = \"disk\"",
        ),
        ("[store]\nkind = \"redis\"", "idempotency.store.url"),
        (
            "[store]\nkind = \"redis\"\nurl = \"http://x\"",
            "idempotency.store.url",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://x\"\nmax_entries = 3",
            "idempotency.store.max_entries",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://x\"\ntimeout_ms = 1",
            "idempotency.store.timeout_ms = 1",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://x\"\nkey_prefix = \"a b\"",
            "idempotency.store.key_prefix",
        ),
        (
            "[store]\nkind = \"memory\"\nurl = \"redis://x\"",
            "idempotency.store.url",
        ),
        (
            "[store]\nkind = \"memory\"\nmax_entries = 0",
            "idempotency.store.max_entries = 0",
        ),
        (
            "[store]\nkind = \"memory\"\nmax_bytes = 1000",
            "idempotency.store.max_bytes = 1000",
        ),
        (
            "[store]\nkind = \"memory\"\nmax_entries = 8388609",
            "must be at most 8388608 (the index is allocated at start)",
        ),
        (
            "[store]\nkind = \"memory\"\nmax_bytes = 17179869185",
            "must be at most 17179869184 (the answer log is allocated at start)",
        ),
        ("[store]\nkind = \"memory\"\nsize = 1", "unknown field"),
    ];
    for (text, expected) in cases {
        let err = config::parse_table(text).expect_err(text);
        assert!(
            err.contains(expected),
            "{text:?}: {err:?} lacks {expected:?}"
        );
    }
}

// ------------------------------------------------------------ memory store

fn memory(entries: usize, bytes: usize, clock: &Arc<ManualClock>) -> MemoryStore {
    MemoryStore::new(
        NonZeroUsize::new(entries).unwrap(),
        NonZeroUsize::new(bytes).unwrap(),
        clock.clone(),
    )
}

const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn scope(n: u32) -> Scope {
    Scope::new(b"user", &n.to_string())
}

#[tokio::test]
async fn memory_claims_complete_and_replay() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(10, 1 << 20, &clock);
    let (t1, t2) = (ClaimToken::fresh(), ClaimToken::fresh());
    assert_eq!(s.claim(&scope(1), &t1, MIN).await, Ok(ClaimResult::Claimed));
    assert_eq!(
        s.claim(&scope(1), &t2, MIN).await,
        Ok(ClaimResult::InFlight)
    );
    // Only the owner completes.
    let rec = Bytes::from_static(b"answer");
    assert_eq!(
        s.complete(&scope(1), &t2, rec.clone(), DAY).await,
        Ok(false)
    );
    assert_eq!(s.complete(&scope(1), &t1, rec.clone(), DAY).await, Ok(true));
    assert_eq!(
        s.claim(&scope(1), &t2, MIN).await,
        Ok(ClaimResult::Completed(rec.clone()))
    );
    // A completed record cannot be released or completed again.
    assert_eq!(s.release(&scope(1), &t1).await, Ok(false));
    assert_eq!(
        s.complete(&scope(1), &t1, rec.clone(), DAY).await,
        Ok(false)
    );
}

#[tokio::test]
async fn memory_release_lets_a_retry_claim() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(10, 1 << 20, &clock);
    let (t1, t2) = (ClaimToken::fresh(), ClaimToken::fresh());
    s.claim(&scope(1), &t1, MIN).await.unwrap();
    assert_eq!(s.release(&scope(1), &t2).await, Ok(false));
    assert_eq!(s.release(&scope(1), &t1).await, Ok(true));
    assert_eq!(s.claim(&scope(1), &t2, MIN).await, Ok(ClaimResult::Claimed));
    assert_eq!(s.usage().0, 1);
}

#[tokio::test]
async fn memory_ttl_evicts_answers() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(10, 1 << 20, &clock);
    let t = ClaimToken::fresh();
    s.claim(&scope(1), &t, MIN).await.unwrap();
    s.complete(&scope(1), &t, Bytes::from_static(b"a"), DAY)
        .await
        .unwrap();
    clock.advance(DAY - Duration::from_millis(1));
    assert!(matches!(
        s.claim(&scope(1), &ClaimToken::fresh(), MIN).await,
        Ok(ClaimResult::Completed(_))
    ));
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        s.claim(&scope(1), &ClaimToken::fresh(), MIN).await,
        Ok(ClaimResult::Claimed)
    );
    // Expired records are dropped even when nobody asks for them.
    let t2 = ClaimToken::fresh();
    s.claim(&scope(2), &t2, MIN).await.unwrap();
    s.complete(&scope(2), &t2, Bytes::from_static(b"b"), DAY)
        .await
        .unwrap();
    clock.advance(DAY);
    s.claim(&scope(3), &ClaimToken::fresh(), MIN).await.unwrap();
    assert_eq!(s.usage().0, 1, "only the fresh claim is left");
}

#[tokio::test]
async fn memory_in_flight_claims_expire_and_lose_their_owner() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(10, 1 << 20, &clock);
    let (dead, retry) = (ClaimToken::fresh(), ClaimToken::fresh());
    s.claim(&scope(1), &dead, MIN).await.unwrap();
    clock.advance(MIN - Duration::from_millis(1));
    assert_eq!(
        s.claim(&scope(1), &retry, MIN).await,
        Ok(ClaimResult::InFlight)
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        s.claim(&scope(1), &retry, MIN).await,
        Ok(ClaimResult::Claimed)
    );
    // The first request finishing late does not overwrite the retry's.
    assert_eq!(
        s.complete(&scope(1), &dead, Bytes::from_static(b"late"), DAY)
            .await,
        Ok(false)
    );
    assert_eq!(s.release(&scope(1), &dead).await, Ok(false));
    assert_eq!(
        s.claim(&scope(1), &dead, MIN).await,
        Ok(ClaimResult::InFlight)
    );
}

async fn store_answer(s: &MemoryStore, n: u32, len: usize) {
    let t = ClaimToken::fresh();
    assert_eq!(s.claim(&scope(n), &t, MIN).await, Ok(ClaimResult::Claimed));
    assert_eq!(
        s.complete(&scope(n), &t, Bytes::from(vec![b'x'; len]), DAY)
            .await,
        Ok(true)
    );
}

async fn has_answer(s: &MemoryStore, n: u32) -> bool {
    let t = ClaimToken::fresh();
    match s.claim(&scope(n), &t, MIN).await.unwrap() {
        ClaimResult::Completed(_) => true,
        ClaimResult::Claimed => {
            s.release(&scope(n), &t).await.unwrap();
            false
        }
        ClaimResult::InFlight => false,
    }
}

#[tokio::test]
async fn memory_entry_bound_evicts_the_oldest_answer() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(3, 1 << 20, &clock);
    for n in 1..=3 {
        store_answer(&s, n, 10).await;
    }
    store_answer(&s, 4, 10).await;
    assert_eq!(s.usage().0, 3);
    // (Asking for a missing one claims it, which makes room in turn: ask
    // for the kept ones first.)
    for n in 2..=4 {
        assert!(has_answer(&s, n).await, "{n} kept");
    }
    assert!(!has_answer(&s, 1).await, "the oldest went");
}

#[tokio::test]
async fn memory_index_is_fixed_at_start_and_keeps_the_newest() {
    // The index has twice the bound's slots, rounded up to whole buckets,
    // and no more; churning through twenty times the bound keeps exactly
    // the bound, nearly all of it the newest records (a bucket that
    // overflows evicts its own oldest answer, a little early), and few of
    // the records a bound older.
    let clock = Arc::new(ManualClock::new());
    let bound = 4_000;
    let s = memory(bound, 1 << 30, &clock);
    let slots = (2 * bound).div_ceil(WAYS) * WAYS;
    assert_eq!(s.slots(), slots);
    let room = s.queue_room();
    assert!(room >= queue_capacity(bound), "{room}");
    let total = 20 * bound as u32;
    for n in 0..total {
        store_answer(&s, n, 10).await;
    }
    assert_eq!(s.usage(), (bound, bound * 10), "churned at the bound");
    assert_eq!(s.stats().evicted, u64::from(total) - bound as u64);
    assert_eq!(s.slots(), slots);
    // The answers' queue was allocated for the bound at start and never
    // grew (a grown one copies every entry under the lock).
    assert_eq!(s.queue_room(), room, "answers' queue regrew");
    let mut kept = 0;
    for n in (total - bound as u32)..total {
        kept += usize::from(has_answer(&s, n).await);
    }
    assert!(
        kept * 100 >= bound * 95,
        "kept {kept} of the newest {bound}"
    );
    let mut old = 0;
    for n in (total - 2 * bound as u32)..(total - bound as u32) {
        old += usize::from(has_answer(&s, n).await);
    }
    // (As many as the buckets evicted early: the queue's front is that
    // much behind.)
    assert!(old * 100 <= bound * 5, "{old} records a bound older kept");
}

#[tokio::test]
async fn memory_log_wraps_without_splitting_an_answer() {
    // A 1,000-byte log: answers of 300 bytes fit three to a lap; the
    // fourth starts the next lap and overwrites the first only.
    let clock = Arc::new(ManualClock::new());
    let s = memory(100, 1000, &clock);
    for n in 1..=3 {
        store_answer(&s, n, 300).await;
    }
    store_answer(&s, 4, 300).await;
    assert_eq!(s.usage(), (3, 900));
    for n in 2..=4 {
        let t = ClaimToken::fresh();
        match s.claim(&scope(n), &t, MIN).await.unwrap() {
            ClaimResult::Completed(b) => assert_eq!(b, Bytes::from(vec![b'x'; 300]), "{n}"),
            other => panic!("{n}: {other:?}"),
        }
    }
    assert!(!has_answer(&s, 1).await);
    assert_eq!(s.stats().evicted, 1);
    // Distinct contents survive many laps intact.
    for n in 10..200u32 {
        let t = ClaimToken::fresh();
        s.claim(&scope(n), &t, MIN).await.unwrap();
        let body = Bytes::from(vec![n as u8; 1 + (n as usize * 37) % 400]);
        assert_eq!(s.complete(&scope(n), &t, body, DAY).await, Ok(true));
    }
    let mut checked = 0;
    for n in 190..200u32 {
        let t = ClaimToken::fresh();
        if let ClaimResult::Completed(b) = s.claim(&scope(n), &t, MIN).await.unwrap() {
            assert_eq!(b, Bytes::from(vec![n as u8; 1 + (n as usize * 37) % 400]));
            checked += 1;
        }
    }
    assert!(checked >= 2, "the newest answers are held: {checked}");
    assert!(s.usage().1 <= 1000);
}

#[tokio::test]
async fn memory_store_metrics_show_fill_and_evictions() {
    let clock = Arc::new(ManualClock::new());
    let s = Arc::new(memory(3, 1 << 20, &clock));
    let registry = prometheus::Registry::new_custom(Some("tether_proxy".into()), None).unwrap();
    registry
        .register(Box::new(
            super::metrics::MemoryStoreCollector::new(s.clone()).unwrap(),
        ))
        .unwrap();
    let read = |name: &str| -> f64 {
        let fams = registry.gather();
        let f = fams
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} not exposed"));
        let m = &f.get_metric()[0];
        if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
            m.get_counter().get_value()
        } else {
            m.get_gauge().get_value()
        }
    };
    assert_eq!(read("tether_proxy_idempotency_memory_records"), 0.0);
    for n in 1..=5 {
        store_answer(&s, n, 10).await;
    }
    // Bound 3: two answers evicted; counted once however often scraped.
    assert_eq!(read("tether_proxy_idempotency_memory_records"), 3.0);
    assert_eq!(read("tether_proxy_idempotency_memory_evicted_total"), 2.0);
    assert_eq!(read("tether_proxy_idempotency_memory_evicted_total"), 2.0);
    assert_eq!(read("tether_proxy_idempotency_memory_bytes"), 30.0);
    // Expiry is not eviction.
    clock.advance(DAY + Duration::from_secs(1));
    let t = ClaimToken::fresh();
    s.claim(&scope(99), &t, MIN).await.unwrap();
    assert_eq!(read("tether_proxy_idempotency_memory_records"), 1.0);
    assert_eq!(read("tether_proxy_idempotency_memory_evicted_total"), 2.0);
}

#[tokio::test]
async fn memory_byte_bound_evicts_the_oldest_answers() {
    let clock = Arc::new(ManualClock::new());
    let per = 1000;
    let s = memory(100, 3 * per, &clock);
    for n in 1..=3 {
        store_answer(&s, n, 1000).await;
    }
    assert_eq!(s.usage(), (3, 3 * per));
    // 2000 bytes more: the two oldest go.
    store_answer(&s, 4, 2000).await;
    assert!(s.usage().1 <= 3 * per);
    assert!(has_answer(&s, 3).await);
    assert!(has_answer(&s, 4).await);
    assert!(!has_answer(&s, 1).await);
    assert!(!has_answer(&s, 2).await);
    // Larger than the whole store: not stored, claim gone.
    let t = ClaimToken::fresh();
    s.claim(&scope(9), &t, MIN).await.unwrap();
    assert_eq!(
        s.complete(&scope(9), &t, Bytes::from(vec![0; 4 * per]), DAY)
            .await,
        Ok(false)
    );
    assert_eq!(
        s.claim(&scope(9), &ClaimToken::fresh(), MIN).await,
        Ok(ClaimResult::Claimed)
    );
}

#[tokio::test]
async fn memory_never_evicts_live_claims() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(2, 1 << 20, &clock);
    s.claim(&scope(1), &ClaimToken::fresh(), MIN).await.unwrap();
    s.claim(&scope(2), &ClaimToken::fresh(), MIN).await.unwrap();
    assert_eq!(
        s.claim(&scope(3), &ClaimToken::fresh(), MIN).await,
        Err(StoreError::Full)
    );
    clock.advance(MIN);
    assert_eq!(
        s.claim(&scope(3), &ClaimToken::fresh(), MIN).await,
        Ok(ClaimResult::Claimed)
    );
}

// ----------------------------------------------------------- state machine

fn engine_with(table: &str, store: Arc<dyn IdempotencyStore>) -> Arc<Idempotency> {
    let cfg = config::parse_table(table).unwrap();
    Idempotency::with_store(cfg, store, IdempotencyMetrics::unregistered().unwrap())
}

fn engine(clock: &Arc<ManualClock>) -> Arc<Idempotency> {
    engine_with(
        "enabled = true\nrequired_prefixes = [\"/orders\"]\nmax_stored_response_bytes = 100",
        Arc::new(memory(100, 1 << 20, clock)),
    )
}

fn headers(key: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(k) = key {
        h.insert(key::HEADER, HeaderValue::from_str(k).unwrap());
    }
    h
}

async fn begin(
    e: &Arc<Idempotency>,
    subject: &str,
    method: Method,
    path: &str,
    key: Option<&str>,
) -> Begin {
    e.begin(
        subject.as_bytes(),
        &method,
        &path.parse::<Uri>().unwrap(),
        &headers(key),
    )
    .await
}

/// Runs a claimed request through: body, answer, finish.
async fn run(t: Begin, body: &[u8], status: u16, answer: &'static [u8]) -> Finished {
    let Begin::Forward(mut t) = t else {
        panic!("expected a claim");
    };
    t.upstream_request();
    t.request_body(Some(&Bytes::copy_from_slice(body)), true);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("set-cookie", HeaderValue::from_static("sid=1"));
    t.response_head(status, &h);
    t.response_body(Some(&Bytes::from_static(answer)), true);
    t.finish().await
}

async fn check(t: Begin, body: &[u8]) -> Answer {
    let Begin::Check(mut c) = t else {
        panic!("expected a stored answer");
    };
    c.update(body);
    c.finish()
}

fn status_of(b: &Begin) -> Option<u16> {
    match b {
        Begin::Reject(p) => Some(p.status),
        _ => None,
    }
}

#[tokio::test]
async fn first_request_claims_then_replays_409s_and_422s() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(&clock);
    let first = begin(&e, "alice", Method::POST, "/orders", Some("\"k1\"")).await;
    let Begin::Forward(mut t) = first else {
        panic!("claim expected");
    };
    // While in flight: 409.
    let again = begin(&e, "alice", Method::POST, "/orders", Some("k1")).await;
    assert_eq!(status_of(&again), Some(409));
    t.upstream_request();
    t.request_body(Some(&Bytes::from_static(b"{\"item\":1}")), true);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("location", HeaderValue::from_static("/orders/1"));
    h.insert("set-cookie", HeaderValue::from_static("sid=1"));
    t.response_head(201, &h);
    t.response_body(Some(&Bytes::from_static(b"{\"id\":")), false);
    t.response_body(Some(&Bytes::from_static(b"1}")), true);
    assert_eq!(t.finish().await, Finished::Stored);

    // Same key, same request: the stored answer, byte for byte.
    let b = begin(&e, "alice", Method::POST, "/orders", Some("k1")).await;
    let Answer::Replay(r) = check(b, b"{\"item\":1}").await else {
        panic!("replay expected");
    };
    assert_eq!(r.status, 201);
    assert_eq!(r.body.as_ref(), b"{\"id\":1}");
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["content-type", "location"]);
    let header = phases::replay_header(&r).unwrap();
    assert_eq!(header.headers["idempotent-replayed"], "true");
    assert_eq!(header.headers["content-length"], "8");
    assert!(header.headers.get("set-cookie").is_none());

    // Same key, another body / path / method: 422.
    for (m, path, body) in [
        (Method::POST, "/orders", &b"{\"item\":2}"[..]),
        (Method::POST, "/orders?x", &b"{\"item\":1}"[..]),
        (Method::PATCH, "/orders", &b"{\"item\":1}"[..]),
    ] {
        let b = begin(&e, "alice", m, path, Some("k1")).await;
        let Answer::Problem(p) = check(b, body).await else {
            panic!("422 expected");
        };
        assert_eq!(p.status, 422);
    }

    // Another subject with the same key: its own record, no replay.
    let other = begin(&e, "bob", Method::POST, "/orders", Some("k1")).await;
    assert!(matches!(other, Begin::Forward(_)));

    let m = e.metrics();
    assert_eq!(m.count(Outcome::Stored), 1);
    assert_eq!(m.count(Outcome::Replayed), 1);
    assert_eq!(m.count(Outcome::Conflict409), 1);
    assert_eq!(m.count(Outcome::Mismatch422), 3);
}

#[tokio::test]
async fn missing_and_malformed_keys_and_uncovered_requests() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(&clock);
    let b = begin(&e, "alice", Method::POST, "/orders/1", None).await;
    assert_eq!(status_of(&b), Some(400));
    let b = begin(&e, "alice", Method::POST, "/other", None).await;
    assert!(matches!(b, Begin::Pass), "no key where none is required");
    let b = begin(&e, "alice", Method::GET, "/orders", None).await;
    assert!(matches!(b, Begin::Pass), "GET is not covered");
    let b = begin(&e, "alice", Method::PUT, "/orders", Some("k")).await;
    assert!(
        matches!(b, Begin::Pass),
        "PUT is not in the default methods"
    );
    let b = begin(&e, "alice", Method::POST, "/other", Some("a b")).await;
    assert_eq!(status_of(&b), Some(400), "malformed anywhere is 400");
    assert_eq!(e.metrics().count(Outcome::Missing400), 1);
    assert_eq!(e.metrics().count(Outcome::Malformed400), 1);

    let off = engine_with("enabled = false", Arc::new(memory(10, 1 << 20, &clock)));
    let b = begin(&off, "alice", Method::POST, "/orders", Some("a b")).await;
    assert!(matches!(b, Begin::Pass), "disabled: nothing checked");
}

#[tokio::test]
async fn unstorable_answers_release_the_claim() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(&clock);
    let key = Some("k");
    let b = || begin(&e, "alice", Method::POST, "/orders", key);
    // 5xx and "try again" statuses.
    for status in [500, 503, 409, 429] {
        assert_eq!(
            run(b().await, b"x", status, b"err").await,
            Finished::NotStored("status not stored")
        );
    }
    // Over max_stored_response_bytes (100), by content-length or by body.
    let Begin::Forward(mut t) = b().await else {
        panic!()
    };
    t.request_body(None, true);
    let mut h = HeaderMap::new();
    h.insert("content-length", HeaderValue::from_static("101"));
    t.response_head(200, &h);
    assert!(matches!(t.finish().await, Finished::NotStored(_)));
    assert!(matches!(
        run(b().await, b"x", 200, &[b'y'; 101]).await,
        Finished::NotStored("body over max_stored_response_bytes")
    ));
    // Cut off mid-body.
    let Begin::Forward(mut t) = b().await else {
        panic!()
    };
    t.request_body(None, true);
    t.response_head(200, &HeaderMap::new());
    t.response_body(Some(&Bytes::from_static(b"par")), false);
    assert_eq!(t.finish().await, Finished::NotStored("answer cut off"));
    // Request body not sent in full; no answer at all.
    let Begin::Forward(mut t) = b().await else {
        panic!()
    };
    t.request_body(Some(&Bytes::from_static(b"half")), false);
    assert!(matches!(t.finish().await, Finished::NotStored(_)));
    let Begin::Forward(t) = b().await else {
        panic!()
    };
    assert_eq!(
        t.finish().await,
        Finished::NotStored("request body not sent in full")
    );
    // After all that, the key is still free and a good answer is stored.
    assert_eq!(run(b().await, b"x", 200, b"ok").await, Finished::Stored);
    assert_eq!(e.metrics().count(Outcome::NotStored), 9);
}

#[tokio::test]
async fn informational_headers_wait_for_the_final_one_and_retries_restart() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(&clock);
    let Begin::Forward(mut t) = begin(&e, "a", Method::POST, "/orders", Some("k")).await else {
        panic!()
    };
    t.upstream_request();
    t.request_body(Some(&Bytes::from_static(b"body")), true);
    t.response_head(100, &HeaderMap::new());
    // A second upstream attempt re-sends the body: hashed once, not twice.
    t.upstream_request();
    t.request_body(Some(&Bytes::from_static(b"body")), true);
    t.response_head(200, &HeaderMap::new());
    t.response_body(None, true);
    assert_eq!(t.finish().await, Finished::Stored);
    let b = begin(&e, "a", Method::POST, "/orders", Some("k")).await;
    assert!(matches!(check(b, b"body").await, Answer::Replay(_)));
}

#[tokio::test]
async fn an_in_flight_claim_of_a_dead_proxy_expires() {
    let clock = Arc::new(ManualClock::new());
    let e = engine(&clock);
    let Begin::Forward(_lost) = begin(&e, "a", Method::POST, "/orders", Some("k")).await else {
        panic!()
    };
    let b = begin(&e, "a", Method::POST, "/orders", Some("k")).await;
    assert_eq!(status_of(&b), Some(409));
    clock.advance(Duration::from_secs(60));
    let b = begin(&e, "a", Method::POST, "/orders", Some("k")).await;
    assert!(matches!(b, Begin::Forward(_)));
}

/// A store that always fails.
struct Broken;

#[async_trait]
impl IdempotencyStore for Broken {
    async fn claim(
        &self,
        _: &Scope,
        _: &ClaimToken,
        _: Duration,
    ) -> Result<ClaimResult, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn complete(
        &self,
        _: &Scope,
        _: &ClaimToken,
        _: Bytes,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn release(&self, _: &Scope, _: &ClaimToken) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

/// A store that hands out a record that does not decode.
struct Garbage;

#[async_trait]
impl IdempotencyStore for Garbage {
    async fn claim(
        &self,
        _: &Scope,
        _: &ClaimToken,
        _: Duration,
    ) -> Result<ClaimResult, StoreError> {
        Ok(ClaimResult::Completed(Bytes::from_static(b"nonsense")))
    }
    async fn complete(
        &self,
        _: &Scope,
        _: &ClaimToken,
        _: Bytes,
        _: Duration,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn release(&self, _: &Scope, _: &ClaimToken) -> Result<bool, StoreError> {
        Ok(false)
    }
}

#[tokio::test]
async fn store_errors_follow_on_store_error() {
    let reject = engine_with("enabled = true", Arc::new(Broken));
    let b = begin(&reject, "a", Method::POST, "/x", Some("k")).await;
    assert_eq!(status_of(&b), Some(503));
    let b = begin(&reject, "a", Method::POST, "/x", None).await;
    assert!(matches!(b, Begin::Pass), "no key: the store is not asked");
    assert_eq!(reject.metrics().count(Outcome::StoreError), 1);

    let forward = engine_with(
        "enabled = true\non_store_error = \"forward\"",
        Arc::new(Broken),
    );
    let b = begin(&forward, "a", Method::POST, "/x", Some("k")).await;
    assert!(matches!(b, Begin::Pass));
    assert_eq!(forward.metrics().count(Outcome::StoreError), 1);

    let garbage = engine_with("enabled = true", Arc::new(Garbage));
    let b = begin(&garbage, "a", Method::POST, "/x", Some("k")).await;
    assert_eq!(
        status_of(&b),
        Some(503),
        "a corrupt record is a store error"
    );
}

/// A memory store seen only through the trait (as the Redis store is):
/// claims go to it; completions and releases too, unless
/// `fail_after_claim`, when they time out.
struct BehindTrait {
    store: MemoryStore,
    fail_after_claim: bool,
}

#[async_trait]
impl IdempotencyStore for BehindTrait {
    async fn claim(
        &self,
        s: &Scope,
        t: &ClaimToken,
        d: Duration,
    ) -> Result<ClaimResult, StoreError> {
        self.store.claim(s, t, d).await
    }
    async fn complete(
        &self,
        s: &Scope,
        t: &ClaimToken,
        r: Bytes,
        d: Duration,
    ) -> Result<bool, StoreError> {
        if self.fail_after_claim {
            return Err(StoreError::Timeout(Duration::from_millis(200)));
        }
        self.store.complete(s, t, r, d).await
    }
    async fn release(&self, s: &Scope, t: &ClaimToken) -> Result<bool, StoreError> {
        if self.fail_after_claim {
            return Err(StoreError::Timeout(Duration::from_millis(200)));
        }
        self.store.release(s, t).await
    }
}

#[tokio::test]
async fn store_latency_is_timed_for_stores_that_do_io_only() {
    // The same memory store, once as itself and once behind the trait
    // alone (as the Redis store is seen): only the second is timed.
    let clock = Arc::new(ManualClock::new());
    let local = engine_with("enabled = true", Arc::new(memory(10, 1 << 20, &clock)));
    let remote = engine_with(
        "enabled = true",
        Arc::new(BehindTrait {
            store: memory(10, 1 << 20, &clock),
            fail_after_claim: false,
        }),
    );
    for e in [&local, &remote] {
        let b = begin(e, "a", Method::POST, "/x", Some("k1")).await;
        assert_eq!(run(b, b"x", 201, b"ok").await, Finished::Stored);
        let b = begin(e, "a", Method::POST, "/x", Some("k2")).await;
        assert_eq!(
            run(b, b"x", 500, b"no").await,
            Finished::NotStored("status not stored")
        );
    }
    let counts = |e: &Arc<Idempotency>| {
        [
            metrics::Op::Claim,
            metrics::Op::Complete,
            metrics::Op::Release,
        ]
        .map(|op| e.metrics().observed(op))
    };
    assert_eq!(counts(&local), [0, 0, 0]);
    assert_eq!(counts(&remote), [2, 1, 1]);
}

#[tokio::test]
async fn store_errors_after_forwarding_are_counted_not_raised() {
    // Claims succeed in memory, then the store "breaks": finish reports it.
    let clock = Arc::new(ManualClock::new());
    let e = engine_with(
        "enabled = true",
        Arc::new(BehindTrait {
            store: memory(10, 1 << 20, &clock),
            fail_after_claim: true,
        }),
    );
    let b = begin(&e, "a", Method::POST, "/x", Some("k")).await;
    assert_eq!(run(b, b"x", 200, b"ok").await, Finished::StoreError);
    let b = begin(&e, "a", Method::POST, "/x", Some("k2")).await;
    assert_eq!(run(b, b"x", 500, b"no").await, Finished::StoreError);
    assert_eq!(e.metrics().count(Outcome::StoreError), 2);
}

#[test]
fn the_real_clock_moves_forward_in_milliseconds() {
    use super::store::{Clock, MonotonicClock};
    let c = MonotonicClock::new();
    let t0 = c.now();
    std::thread::sleep(Duration::from_millis(60));
    let moved = c.now() - t0;
    // A coarse tick is at most 10 ms: 60 ms of sleep shows at least 40.
    assert!(moved >= Duration::from_millis(40), "moved {moved:?}");
    assert_eq!(moved.subsec_nanos() % 1_000_000, 0, "whole milliseconds");
}

#[test]
fn metrics_register_every_label_at_zero() {
    let registry = prometheus::Registry::new_custom(Some("tether_proxy".into()), None).unwrap();
    let m = IdempotencyMetrics::new(&registry).unwrap();
    m.observe(metrics::Op::Claim, 0.001);
    let mut buf = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut buf,
    )
    .unwrap();
    let text = String::from_utf8(buf).unwrap();
    for o in Outcome::ALL {
        let line = format!(
            "tether_proxy_idempotency_total{{outcome=\"{}\"}} 0",
            o.label()
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(text.contains("tether_proxy_idempotency_store_seconds_count{op=\"claim\"} 1"));
    // A second registration on the same registry is an error, not a panic.
    assert!(IdempotencyMetrics::new(&registry).is_err());
}

#[tokio::test]
async fn the_smallest_valid_memory_store_holds_the_largest_answer() {
    let floor = 100 + record::MAX_OVERHEAD;
    let table = |bytes: usize| {
        format!("enabled = true\nmax_stored_response_bytes = 100\n[store]\nkind = \"memory\"\nmax_bytes = {bytes}")
    };
    assert!(config::parse_table(&table(floor - 1)).is_err());
    let cfg = config::parse_table(&table(floor)).unwrap();
    let StoreConfig::Memory {
        max_entries,
        max_bytes,
    } = cfg.store
    else {
        panic!()
    };
    let clock = Arc::new(ManualClock::new());
    let store = Arc::new(MemoryStore::new(max_entries, max_bytes, clock));
    let e = Idempotency::with_store(cfg, store, IdempotencyMetrics::unregistered().unwrap());
    let Begin::Forward(mut t) = begin(&e, "a", Method::POST, "/x", Some("k")).await else {
        panic!()
    };
    t.request_body(None, true);
    // Kept headers at their 16 KiB limit, body at its 100-byte limit.
    let mut h = HeaderMap::new();
    let mut used = 0;
    while used + 4 + 4 + 1000 <= record::MAX_HEADER_BYTES {
        h.append("link", HeaderValue::from_str(&"l".repeat(1000)).unwrap());
        used += 4 + 4 + 1000;
    }
    let rest = record::MAX_HEADER_BYTES - used - 4 - 4;
    h.append("vary", HeaderValue::from_str(&"v".repeat(rest)).unwrap());
    t.response_head(200, &h);
    t.response_body(Some(&Bytes::from(vec![b'b'; 100])), true);
    assert_eq!(t.finish().await, Finished::Stored);
}

// ------------------------------------------------ the cheap keyed path

#[test]
fn a_record_written_as_it_arrives_is_the_encoded_stored_response() {
    // Kept headers sent out of REPLAYED_HEADERS order, one name twice,
    // dropped ones in between.
    let mut h = HeaderMap::new();
    h.append("link", HeaderValue::from_static("</a>; rel=next"));
    h.append("set-cookie", HeaderValue::from_static("sid=abc"));
    h.append("location", HeaderValue::from_static("/orders/7"));
    h.append("link", HeaderValue::from_static("</b>; rel=prev"));
    h.append("content-type", HeaderValue::from_static("application/json"));
    h.append("x-request-id", HeaderValue::from_static("r1"));
    let fp = fp(Method::POST, "/orders", &[b"{}"]);
    let mut w = record::RecordWriter::new(201, &h, 0).unwrap();
    w.push_body(b"{\"id\":");
    w.push_body(b"7}");
    assert_eq!(w.body_len(), 8);
    let written = w.finish(&fp);
    let expected = StoredResponse {
        fingerprint: fp,
        status: 201,
        headers: record::replayed_headers(&h).unwrap(),
        body: Bytes::from_static(b"{\"id\":7}"),
    };
    assert_eq!(written, expected.encode());
    let back = StoredResponse::decode(written).unwrap();
    let names: Vec<&str> = back.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["content-type", "location", "link", "link"]);
    assert_eq!(back.headers[2].1, "</a>; rel=next");
    assert_eq!(back.headers[3].1, "</b>; rel=prev");
    // No body, no kept header.
    let empty = record::RecordWriter::new(204, &HeaderMap::new(), 16).unwrap();
    let back = StoredResponse::decode(empty.finish(&fp)).unwrap();
    assert_eq!(
        (back.status, back.headers.len(), back.body.len()),
        (204, 0, 0)
    );
}

#[test]
fn kept_headers_follow_the_documented_list_in_its_order() {
    let mut h = HeaderMap::new();
    for name in record::REPLAYED_HEADERS.iter().rev() {
        h.append(*name, HeaderValue::from_static("v"));
    }
    let kept = record::replayed_headers(&h).unwrap();
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, record::REPLAYED_HEADERS);
    let w = record::RecordWriter::new(200, &h, 0).unwrap();
    let back = StoredResponse::decode(w.finish(&record::Fingerprint([0; 32]))).unwrap();
    assert_eq!(back.headers, kept);
}

#[test]
fn a_record_writer_refuses_what_replayed_headers_refuses() {
    let mut big = HeaderMap::new();
    for i in 0..3 {
        big.append(
            "link",
            HeaderValue::from_str(&format!("<{}>", "l".repeat(8000 + i))).unwrap(),
        );
    }
    assert!(record::RecordWriter::new(200, &big, 0).is_none());
    let mut many = HeaderMap::new();
    for i in 0..=record::MAX_HEADER_COUNT {
        many.append("vary", HeaderValue::from_str(&format!("x-{i}")).unwrap());
    }
    assert!(record::replayed_headers(&many).is_none());
    assert!(record::RecordWriter::new(200, &many, 0).is_none());
}

#[test]
fn a_restarted_fingerprint_forgets_the_body_sent_before() {
    let uri: Uri = "/orders".parse().unwrap();
    let mut b = FingerprintBuilder::new(&Method::POST, &uri);
    b.update(b"first attempt, cut off");
    b.restart_body();
    b.update(b"{\"a\":1}");
    assert_eq!(b.finish(), fp(Method::POST, "/orders", &[b"{\"a\":1}"]));
    // The target is length-prefixed: its end cannot move into the body.
    assert_ne!(
        fp(Method::POST, "/a", &[b"b"]),
        fp(Method::POST, "/ab", &[b""])
    );
}

#[test]
fn claim_tokens_are_unique_and_written_in_hex() {
    let (a, b) = (ClaimToken::fresh(), ClaimToken::fresh());
    assert_ne!(a, b);
    let tokens: std::collections::HashSet<_> = (0..10_000).map(|_| ClaimToken::fresh()).collect();
    assert_eq!(tokens.len(), 10_000);
    assert_eq!(a.hex().len(), 32);
    assert!(a.hex().bytes().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn memory_complete_after_the_claim_expired_stores_nothing_and_counts_nothing() {
    let clock = Arc::new(ManualClock::new());
    let s = memory(10, 1 << 20, &clock);
    let (t1, t2) = (ClaimToken::fresh(), ClaimToken::fresh());
    s.claim(&scope(1), &t1, MIN).await.unwrap();
    // Another token's completion leaves the claim and the counts as they were.
    let before = s.usage();
    assert_eq!(
        s.complete(&scope(1), &t2, Bytes::from_static(b"x"), DAY)
            .await,
        Ok(false)
    );
    assert_eq!(s.usage(), before);
    assert_eq!(
        s.claim(&scope(1), &t2, MIN).await,
        Ok(ClaimResult::InFlight)
    );
    // The owner, too late: nothing stored, nothing left.
    clock.advance(MIN);
    assert_eq!(
        s.complete(&scope(1), &t1, Bytes::from_static(b"x"), DAY)
            .await,
        Ok(false)
    );
    assert_eq!(s.usage(), (0, 0));
    assert_eq!(s.claim(&scope(1), &t2, MIN).await, Ok(ClaimResult::Claimed));
}

#[test]
fn hex_matches_the_formatted_digits_at_every_length() {
    for n in [0usize, 1, 16, 32, 63, 64, 65, 200] {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(record::hex(&bytes), want, "{n} bytes");
        let mut s = String::from("tether:idem:");
        record::push_hex(&mut s, &bytes);
        assert_eq!(s, format!("tether:idem:{want}"));
    }
}
