//! The bench's own HTTP/1.1 load generator: one thread (tokio current
//! thread), `connections` keep-alive connections.
//!
//! Closed loop: each connection sends its next request when the previous
//! answer is in. Open loop: requests are due on a fixed schedule (rate /
//! connections per connection, staggered); a connection sends each one at
//! its due time, or at once when it is late. Coordinated omission is
//! corrected the way wrk2 does: when a request goes out late because the
//! previous answer on its connection came after its due time, its latency
//! counts from the due time, so a stall counts for every request it held
//! back. (When the connection was idle and only the timer woke late,
//! latency counts from the actual send: that delay is the generator's.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send: the generator's input (also read by wrk's runs).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub bearer: Option<String>,
    pub connections: usize,
    pub warmup_ms: u64,
    pub duration_ms: u64,
    /// Requests per second for an open-loop load; `None` = closed loop.
    pub rate: Option<f64>,
    /// Send POSTs with this body instead of `GET /`.
    #[serde(default)]
    pub post: Option<PostSpec>,
}

/// A POST load: the body, and whether every request carries a fresh
/// `Idempotency-Key` (unique per request, so none is a replay).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct PostSpec {
    pub body: String,
    pub keyed: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    /// Non-200 answers and broken connections.
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Which generator produced this.
    pub tool: String,
}

struct Conn {
    lat_us: Vec<u32>,
    requests: u64,
    errors: u64,
}

pub fn run(spec: &LoadSpec) -> LoadResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let auth = spec
            .bearer
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = match &spec.post {
            None => format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
            Some(p) => format!(
                "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n",
                p.body.len()
            ),
        }
        .into_bytes();
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + Duration::from_millis(spec.warmup_ms);
        let end = measure_from + Duration::from_millis(spec.duration_ms);
        let mut tasks = Vec::new();
        for i in 0..spec.connections {
            let request = request.clone();
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                conn(i, &spec, &request, start, measure_from, end).await
            }));
        }
        let mut all = Vec::new();
        let (mut requests, mut errors) = (0, 0);
        for t in tasks {
            let c = t.await.expect("load task");
            all.extend(c.lat_us);
            requests += c.requests;
            errors += c.errors;
        }
        all.sort_unstable();
        let pct = |p: f64| {
            if all.is_empty() {
                f64::NAN
            } else {
                all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64
            }
        };
        let seconds = spec.duration_ms as f64 / 1000.0;
        LoadResult {
            requests,
            errors,
            seconds,
            rps: requests as f64 / seconds,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            tool: if spec.rate.is_some() {
                "bench open loop"
            } else {
                "bench closed loop"
            }
            .into(),
        }
    })
}

async fn conn(
    i: usize,
    spec: &LoadSpec,
    request: &[u8],
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> Conn {
    let mut c = Conn {
        lat_us: Vec::with_capacity(1 << 16),
        requests: 0,
        errors: 0,
    };
    tokio::time::sleep_until(start.into()).await;
    let Ok(mut sock) = TcpStream::connect(spec.addr).await else {
        c.errors += 1;
        return c;
    };
    let _ = sock.set_nodelay(true);
    let interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));
    let mut due = match interval {
        Some(iv) => start + iv.mul_f64(i as f64 / spec.connections as f64),
        None => start,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut prev_done = start;
    // POST: the head so far, then per request the key (if any), the end
    // of the head and the body. Keys are unique per run, connection and
    // request, so none is a replay.
    let run_id = std::process::id();
    let mut seq: u64 = 0;
    let mut post_request = Vec::with_capacity(request.len() + 256);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let from = if interval.is_some() {
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            }
            // Late because our previous answer came late: count from
            // the due time (coordinated-omission correction).
            if prev_done > due {
                due
            } else {
                Instant::now()
            }
        } else {
            now
        };
        let bytes: &[u8] = match &spec.post {
            None => request,
            Some(p) => {
                use std::io::Write;
                post_request.clear();
                post_request.extend_from_slice(request);
                if p.keyed {
                    seq += 1;
                    let _ = write!(
                        post_request,
                        "Idempotency-Key: \"bench-{run_id}-{i}-{seq}\"\r\n"
                    );
                }
                post_request.extend_from_slice(b"\r\n");
                post_request.extend_from_slice(p.body.as_bytes());
                &post_request
            }
        };
        if sock.write_all(bytes).await.is_err() {
            c.errors += 1;
            break;
        }
        match read_response(&mut sock, &mut buf).await {
            Ok(status) => {
                let done = Instant::now();
                prev_done = done;
                if from >= measure_from && done <= end {
                    c.requests += 1;
                    if status != 200 {
                        c.errors += 1;
                    }
                    c.lat_us
                        .push(done.duration_since(from).as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Err(_) => {
                c.errors += 1;
                break;
            }
        }
        if let Some(iv) = interval {
            due += iv;
        }
    }
    c
}

/// Reads one response (Content-Length bodies only); its status.
async fn read_response(sock: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<u16> {
    let mut have = 0;
    loop {
        let n = sock.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("status"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            let mut body = have - (end + 4);
            while body < len {
                let n = sock.read(&mut buf[..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body += n;
            }
            return Ok(status);
        }
        if have == buf.len() {
            return Err(std::io::Error::other("response head too large"));
        }
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
