//! The Redis store, shared by the proxies of one region.
//!
//! One key per scope, `{key_prefix}{hex(scope)}`, holding either `I` +
//! claim token (in flight) or `C` + the encoded answer. Each operation is
//! one Lua script, so it is atomic on the server:
//!
//! - claim: `SET key I<token> NX PX in_flight_ttl`; when the key exists,
//!   its value is returned in the same round trip;
//! - complete: replace the value with `C<record>` (`PX ttl`) only if it is
//!   still `I<token>`;
//! - release: `DEL` only if the value is still `I<token>`.
//!
//! The connection (a `redis` `ConnectionManager`: one multiplexed
//! connection, reconnecting on failure) is opened on first use, so the
//! store can be built before any runtime runs and a Redis that is down at
//! start-up is a store error per request, not a start-up failure. Every
//! operation, connecting included, is bounded by `timeout`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::OnceCell;

use super::{ClaimResult, ClaimToken, IdempotencyStore, StoreError};
use crate::idempotency::record::Scope;

const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return redis.call('GET', KEYS[1])
";

const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    key_prefix: String,
    timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
}

impl RedisStore {
    /// Parses the URL; connects on first use. `timeout` bounds each
    /// operation.
    pub fn new(url: &str, key_prefix: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {:?}", e.kind())))?;
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            key_prefix: key_prefix.to_owned(),
            timeout,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        })
    }

    fn key(&self, scope: &Scope) -> String {
        let mut k = String::with_capacity(self.key_prefix.len() + 64);
        k.push_str(&self.key_prefix);
        crate::idempotency::record::push_hex(&mut k, &scope.0);
        k
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    // Reconnection is retried per request, not in a long
                    // backoff inside one: the request has its own deadline.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(self.timeout);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(conn.clone())
    }

    /// Runs `f` against the connection within the timeout.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let inner = async {
            let conn = self.connection().await?;
            f(conn)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, inner).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(started.elapsed())),
        }
    }
}

/// `I` + the token in hex: 33 bytes on the stack.
fn claim_value(token: &ClaimToken) -> [u8; 33] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut v = [0u8; 33];
    v[0] = b'I';
    for (i, b) in token.as_bytes().iter().enumerate() {
        v[1 + 2 * i] = DIGITS[(b >> 4) as usize];
        v[2 + 2 * i] = DIGITS[(b & 15) as usize];
    }
    v
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        in_flight_ttl: Duration,
    ) -> Result<ClaimResult, StoreError> {
        let key = self.key(scope);
        let value = claim_value(token);
        let ms = in_flight_ttl.as_millis() as u64;
        let answer: Value = self
            .run(|mut c| async move {
                self.claim
                    .key(&key)
                    .arg(&value)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match answer {
            Value::Int(1) => Ok(ClaimResult::Claimed),
            Value::BulkString(v) => match v.first() {
                Some(b'I') => Ok(ClaimResult::InFlight),
                Some(b'C') => Ok(ClaimResult::Completed(Bytes::from(v).slice(1..))),
                _ => Err(StoreError::Protocol(
                    "a record that is neither a claim nor an answer".into(),
                )),
            },
            // The key expired between SET NX and GET (a claim a few ms
            // from its end): report it in flight, the client retries.
            Value::Nil => Ok(ClaimResult::InFlight),
            other => Err(StoreError::Protocol(format!("claim answered {other:?}"))),
        }
    }

    async fn complete(
        &self,
        scope: &Scope,
        token: &ClaimToken,
        record: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.key(scope);
        let expected = claim_value(token);
        let mut value = Vec::with_capacity(1 + record.len());
        value.push(b'C');
        value.extend_from_slice(&record);
        let ms = ttl.as_millis() as u64;
        let done: i64 = self
            .run(|mut c| async move {
                self.complete
                    .key(&key)
                    .arg(&expected)
                    .arg(&value)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    async fn release(&self, scope: &Scope, token: &ClaimToken) -> Result<bool, StoreError> {
        let key = self.key(scope);
        let expected = claim_value(token);
        let done: i64 = self
            .run(|mut c| async move {
                self.release
                    .key(&key)
                    .arg(&expected)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }
}
