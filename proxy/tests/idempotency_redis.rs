//! The Redis idempotency store against a real `redis-server`, started per
//! test on an ephemeral port with a temporary directory and no
//! persistence, killed on drop. Two store instances on one server stand
//! for two proxies of one region.
//!
//! Needs `/usr/bin/redis-server` (Debian's `redis-server` package,
//! `scripts/install-deps.sh`); the test kit's `Redis` starts a private one,
//! never the system service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use tether_proxy::idempotency::record::Scope;
use tether_proxy::idempotency::store::redis::RedisStore;
use tether_proxy::idempotency::{
    config, Answer, Begin, ClaimResult, ClaimToken, Finished, Idempotency, IdempotencyMetrics,
    IdempotencyStore, Outcome, StoreError,
};

const TIMEOUT: Duration = Duration::from_millis(300);
const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The test kit's private `redis-server`, with the stores and engines
/// these tests build on it.
struct Redis(tether_testkit::Redis);

impl Redis {
    fn start() -> Redis {
        Redis(tether_testkit::Redis::start())
    }

    /// Starts the killed server again on its port, empty.
    fn spawn(&mut self) {
        self.0.restart();
    }

    fn kill(&mut self) {
        self.0.kill();
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn store(&self) -> Arc<RedisStore> {
        Arc::new(RedisStore::new(&self.url(), "test:idem:", TIMEOUT).expect("store"))
    }

    fn engine(&self, table: &str) -> Arc<Idempotency> {
        let cfg = config::parse_table(&format!(
            "{table}\n[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = {}",
            self.url(),
            TIMEOUT.as_millis()
        ))
        .expect("table");
        Idempotency::with_store(
            cfg,
            self.store(),
            IdempotencyMetrics::unregistered().unwrap(),
        )
    }
}

fn scope(n: u32) -> Scope {
    Scope::new(b"user-1", &format!("key-{n}"))
}

async fn begin(e: &Arc<Idempotency>, key: &str, path: &str) -> Begin {
    let mut h = HeaderMap::new();
    h.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    e.begin(b"alice", &Method::POST, &path.parse::<Uri>().unwrap(), &h)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_claims_and_answers() {
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let (ta, tb) = (ClaimToken::fresh(), ClaimToken::fresh());
    assert_eq!(a.claim(&scope(1), &ta, MIN).await, Ok(ClaimResult::Claimed));
    assert_eq!(
        b.claim(&scope(1), &tb, MIN).await,
        Ok(ClaimResult::InFlight)
    );
    // Only the owner completes or releases.
    let record = Bytes::from_static(b"the stored answer");
    assert_eq!(b.release(&scope(1), &tb).await, Ok(false));
    assert_eq!(
        b.complete(&scope(1), &tb, record.clone(), DAY).await,
        Ok(false)
    );
    assert_eq!(
        a.complete(&scope(1), &ta, record.clone(), DAY).await,
        Ok(true)
    );
    assert_eq!(
        b.claim(&scope(1), &tb, MIN).await,
        Ok(ClaimResult::Completed(record.clone()))
    );
    assert_eq!(
        a.release(&scope(1), &ta).await,
        Ok(false),
        "an answer is not a claim"
    );
    // Release is compare-and-delete: the other proxy can claim afterwards.
    assert_eq!(a.claim(&scope(2), &ta, MIN).await, Ok(ClaimResult::Claimed));
    assert_eq!(a.release(&scope(2), &ta).await, Ok(true));
    assert_eq!(b.claim(&scope(2), &tb, MIN).await, Ok(ClaimResult::Claimed));

    // The records expire in Redis: the answer with the long TTL, the
    // claim with the in-flight one.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let answer_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("test:idem:{}", scope(1).hex()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        answer_ttl > 0 && answer_ttl <= DAY.as_millis() as i64,
        "{answer_ttl}"
    );
    let claim_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("test:idem:{}", scope(2).hex()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        claim_ttl > 0 && claim_ttl <= MIN.as_millis() as i64,
        "{claim_ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_the_other_proxy_is_replayed_409d_or_422d() {
    let redis = Redis::start();
    let table = "enabled = true";
    let (p1, p2) = (redis.engine(table), redis.engine(table));

    let Begin::Forward(mut t) = begin(&p1, "\"k\"", "/orders").await else {
        panic!("the first request claims");
    };
    let during = begin(&p2, "k", "/orders").await;
    assert!(matches!(&during, Begin::Reject(p) if p.status == 409));
    t.upstream_request();
    t.request_body(Some(&Bytes::from_static(b"{\"n\":1}")), true);
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    t.response_head(201, &h);
    t.response_body(Some(&Bytes::from_static(b"{\"order\":1}")), true);
    assert_eq!(t.finish().await, Finished::Stored);

    let Begin::Check(mut c) = begin(&p2, "k", "/orders").await else {
        panic!("the answer is found through the other proxy");
    };
    c.update(b"{\"n\":1}");
    let Answer::Replay(r) = c.finish() else {
        panic!("replay expected");
    };
    assert_eq!((r.status, r.body.as_ref()), (201, &b"{\"order\":1}"[..]));

    let Begin::Check(mut c) = begin(&p2, "k", "/orders").await else {
        panic!()
    };
    c.update(b"{\"n\":2}");
    assert!(matches!(c.finish(), Answer::Problem(p) if p.status == 422));
    assert_eq!(p2.metrics().count(Outcome::Replayed), 1);
    assert_eq!(p2.metrics().count(Outcome::Mismatch422), 1);
    assert_eq!(p2.metrics().count(Outcome::Conflict409), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_one_key_have_exactly_one_winner() {
    let redis = Redis::start();
    let stores = [redis.store(), redis.store()];
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = stores[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                s.claim(&scope(100 + round), &ClaimToken::fresh(), MIN)
                    .await
            }));
        }
        let mut claimed = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ClaimResult::Claimed) => claimed += 1,
                Ok(ClaimResult::InFlight) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(claimed, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_claim_expires_in_redis() {
    let redis = Redis::start();
    let (a, b) = (redis.store(), redis.store());
    let (dead, retry) = (ClaimToken::fresh(), ClaimToken::fresh());
    let short = Duration::from_millis(200);
    assert_eq!(
        a.claim(&scope(7), &dead, short).await,
        Ok(ClaimResult::Claimed)
    );
    // Poll until Redis expires the claim (it must, well within 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.claim(&scope(7), &retry, MIN).await {
            Ok(ClaimResult::Claimed) => break,
            Ok(ClaimResult::InFlight) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "the claim never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The dead proxy's late completion does not overwrite the retry's claim.
    assert_eq!(
        a.complete(&scope(7), &dead, Bytes::from_static(b"late"), DAY)
            .await,
        Ok(false)
    );
    assert_eq!(
        b.claim(&scope(7), &dead, MIN).await,
        Ok(ClaimResult::InFlight)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_gives_store_errors_then_recovers() {
    let mut redis = Redis::start();
    let store = redis.store();
    let reject = redis.engine("enabled = true");
    let forward = redis.engine("enabled = true\non_store_error = \"forward\"");
    let t = ClaimToken::fresh();
    assert_eq!(
        store.claim(&scope(1), &t, MIN).await,
        Ok(ClaimResult::Claimed)
    );
    let Begin::Forward(tracker) = begin(&reject, "in-flight", "/orders").await else {
        panic!("claim expected while Redis is up");
    };

    redis.kill();

    // Every operation fails with a typed error, within its timeout.
    let started = Instant::now();
    let errs = [
        store.claim(&scope(2), &t, MIN).await.err(),
        store
            .complete(&scope(1), &t, Bytes::from_static(b"x"), DAY)
            .await
            .err(),
        store.release(&scope(1), &t).await.err(),
    ];
    for e in &errs {
        assert!(
            matches!(e, Some(StoreError::Unavailable(_) | StoreError::Timeout(_))),
            "{e:?}"
        );
    }
    assert!(
        started.elapsed() < 3 * TIMEOUT + Duration::from_secs(2),
        "store errors took {:?}",
        started.elapsed()
    );
    // The engine applies on_store_error; a request in flight finishes
    // without a panic, counting the error.
    let b = begin(&reject, "k", "/orders").await;
    assert!(matches!(&b, Begin::Reject(p) if p.status == 503));
    assert!(matches!(begin(&forward, "k", "/orders").await, Begin::Pass));
    assert_eq!(tracker.finish().await, Finished::StoreError);
    assert_eq!(reject.metrics().count(Outcome::StoreError), 2);
    assert_eq!(forward.metrics().count(Outcome::StoreError), 1);

    // Redis back on the same port (empty: no persistence): the same store
    // instances reconnect.
    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.claim(&scope(3), &ClaimToken::fresh(), MIN).await {
            Ok(ClaimResult::Claimed) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {
                assert!(Instant::now() < deadline, "the store never reconnected");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match begin(&reject, "after", "/orders").await {
            Begin::Forward(_) => break,
            _ => {
                assert!(Instant::now() < deadline, "the engine never recovered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
