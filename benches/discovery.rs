//! Discovery under load: `cargo bench --bench discovery`.
//!
//! Starts discovery in-process on 127.0.0.1:0 on a single-threaded runtime
//! (one core), registers 10,000 servers, then measures from another thread:
//! (a) heartbeats per second absorbed over several keep-alive connections,
//! (b) the time to serve a full 10,000-server snapshot (p50/p99 over 200
//! requests), alone and while heartbeats keep arriving.
//!
//! The load generator is a minimal HTTP/1.1 client on raw tokio sockets, so
//! the client's own cost (which shares the machine) stays small next to the
//! server's. Targets (issue 2): >= 20,000 heartbeats/s, snapshot p99 < 10 ms.
//! Runs for about 15 seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_discovery::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER: &str = "bench-cluster-token-0123456789";
const SERVERS: usize = 10_000;
const SNAPSHOTS: usize = 200;
const HEARTBEAT_TARGET: f64 = 20_000.0;
const SNAPSHOT_P99_TARGET: Duration = Duration::from_millis(10);

fn main() {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = Config::loopback(CLUSTER, "bench-admin-token-0123456789");
            // Nothing may expire while the bench runs.
            config.heartbeat_interval = Duration::from_secs(60);
            config.ttl = Duration::from_secs(600);
            let running = tether_discovery::bind(config).await.unwrap();
            addr_tx.send(running.local_addr()).unwrap();
            stop_rx.await.ok();
            running.stop().await.unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(bench(addr));
    stop_tx.send(()).ok();
    server.join().unwrap();
    report.print();
}

struct Report {
    listing_build: Vec<Duration>,
    register: Duration,
    heartbeats: Vec<(usize, u64, Duration)>,
    snapshot_bytes: usize,
    snapshot_idle: Vec<Duration>,
    snapshot_loaded: Vec<Duration>,
    loaded_heartbeats: f64,
}

async fn bench(addr: SocketAddr) -> Report {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..SERVERS)
            .map(|i| heartbeat_request(addr, i, 1.0))
            .collect(),
    );

    // Register every server, over 16 connections.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            for i in (c..SERVERS).step_by(16) {
                let status = conn.exchange(&bodies[i]).await;
                assert_eq!(status, 200, "registering server {i}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let register = start.elapsed();

    // The listing really holds all of them.
    let mut conn = Conn::open(addr).await;
    let get = format!("GET /v1/servers HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes();
    assert_eq!(conn.exchange(&get).await, 200);
    let listing: serde_json::Value = serde_json::from_slice(&conn.body).unwrap();
    assert_eq!(listing["servers"].as_array().unwrap().len(), SERVERS);
    let snapshot_bytes = conn.body.len();

    // (a) Heartbeats at several connection counts. Loads alternate between
    // 1.0 and 1.2: stored on every heartbeat, never a version bump, which is
    // what steady state looks like.
    let jittered: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..SERVERS)
            .map(|i| heartbeat_request(addr, i, 1.2))
            .collect(),
    );
    let mut heartbeats = Vec::new();
    for connections in [4, 16, 64] {
        let (count, took) = heartbeat_load(
            addr,
            connections,
            Duration::from_secs(3),
            [bodies.clone(), jittered.clone()],
            None,
        )
        .await;
        heartbeats.push((connections, count, took));
    }

    // (b) Full snapshots, one at a time.
    let mut snapshot_idle = Vec::with_capacity(SNAPSHOTS);
    for _ in 0..SNAPSHOTS {
        let t = Instant::now();
        assert_eq!(conn.exchange(&get).await, 200);
        snapshot_idle.push(t.elapsed());
        assert!(conn.body.len() > snapshot_bytes / 10 * 9, "a short listing");
    }

    // (b') The same while 16 connections keep heartbeating.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(heartbeat_load(
        addr,
        16,
        Duration::from_secs(60),
        [bodies.clone(), jittered.clone()],
        Some(stop.clone()),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut snapshot_loaded = Vec::with_capacity(SNAPSHOTS);
    for _ in 0..SNAPSHOTS {
        let t = Instant::now();
        assert_eq!(conn.exchange(&get).await, 200);
        snapshot_loaded.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let (count, took) = load.await.unwrap();

    // (c) The server's own cost of a listing, without HTTP: builds the
    // body straight from the registry (what the GET handler does).
    let listing_build = listing_build_times();

    Report {
        listing_build,
        register,
        heartbeats,
        snapshot_bytes,
        snapshot_idle,
        snapshot_loaded,
        loaded_heartbeats: count as f64 / took.as_secs_f64(),
    }
}

fn listing_build_times() -> Vec<Duration> {
    use tether_discovery::metrics::Metrics;
    use tether_discovery::registry::Registry;
    use tether_protocol::wire::Heartbeat;
    let metrics = Arc::new(Metrics::new().unwrap());
    let registry = Registry::new(Duration::from_secs(600), 1, metrics);
    let now = tokio::time::Instant::now();
    for i in 0..SERVERS {
        let hb = Heartbeat {
            id: format!("bench-{i:05}"),
            region: "eu".into(),
            url: format!("http://127.0.0.1:{}", 20_000 + i),
            load: (i % 7) as f64,
            healthy: true,
            draining: false,
        };
        registry.heartbeat(hb, now).unwrap();
    }
    (0..SNAPSHOTS)
        .map(|_| {
            let t = Instant::now();
            let listing = registry.listing(tokio::time::Instant::now());
            let took = t.elapsed();
            assert!(listing.body.len() > 1_000_000);
            took
        })
        .collect()
}

/// Sends heartbeats over `connections` keep-alive connections for `run_for`
/// (or until `stop`), cycling through the servers. Returns how many were
/// answered 200 and the time taken.
async fn heartbeat_load(
    addr: SocketAddr,
    connections: usize,
    run_for: Duration,
    variants: [Arc<Vec<Vec<u8>>>; 2],
    stop: Option<Arc<AtomicBool>>,
) -> (u64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (variants, done, stop) = (variants.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut i = c;
            let mut round = 0;
            while Instant::now() < deadline
                && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
            {
                let status = conn.exchange(&variants[round % 2][i]).await;
                assert_eq!(status, 200);
                done.fetch_add(1, Ordering::Relaxed);
                i += connections;
                if i >= SERVERS {
                    i -= SERVERS;
                    round += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

fn heartbeat_request(addr: SocketAddr, i: usize, load: f64) -> Vec<u8> {
    let region = ["eu", "us", "ap", "sa"][i % 4];
    let body = serde_json::json!({
        "id": format!("bench-{i:05}"),
        "region": region,
        "url": format!("http://127.0.0.1:{}", 20_000 + i),
        "load": load + (i % 7) as f64,
        "healthy": true,
    })
    .to_string();
    format!(
        "POST /v1/heartbeat HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {CLUSTER}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive HTTP/1.1 connection: write a request, read the answer
/// (headers, then `Content-Length` bytes of body).
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Conn {
            tcp,
            buf: Vec::with_capacity(4096),
            body: Vec::new(),
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> u16 {
        self.tcp.write_all(request).await.unwrap();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        self.body.clear();
        self.body
            .extend_from_slice(&self.buf[head_end..head_end + length]);
        self.buf.drain(..head_end + length);
        status
    }

    async fn fill(&mut self) {
        // Into spare capacity: zeroing a buffer per read would cost the
        // client more than the server spends on a heartbeat.
        self.buf.reserve(64 * 1024);
        let n = self.tcp.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "discovery closed the connection");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl Report {
    fn print(mut self) {
        println!(
            "\ndiscovery bench: server on one core (current_thread runtime), \
             load generator on another thread, loopback"
        );
        println!(
            "registered {SERVERS} servers in {} ({:.0} heartbeats/s); full snapshot = {} KiB\n",
            ms(self.register),
            SERVERS as f64 / self.register.as_secs_f64(),
            self.snapshot_bytes / 1024
        );
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut best = 0.0f64;
        for (connections, count, took) in &self.heartbeats {
            let rate = *count as f64 / took.as_secs_f64();
            best = best.max(rate);
            rows.push((
                format!("heartbeats/s, {connections} connections"),
                format!("{rate:.0}/s"),
            ));
        }
        self.snapshot_idle.sort();
        self.snapshot_loaded.sort();
        for (name, v) in [
            ("idle", &self.snapshot_idle),
            ("under heartbeats", &self.snapshot_loaded),
        ] {
            for (label, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
                rows.push((
                    format!("{SERVERS}-server snapshot {label}, {name}"),
                    ms(percentile(v, p)),
                ));
            }
        }
        self.listing_build.sort();
        for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
            rows.push((
                format!("listing build {label}, in-process, no HTTP"),
                ms(percentile(&self.listing_build, p)),
            ));
        }
        rows.push((
            "heartbeats/s, 16 connections, during snapshots".into(),
            format!("{:.0}/s", self.loaded_heartbeats),
        ));
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        println!("| {:<width$} | {:>10} |", "measurement", "result");
        println!("|-{}-|-{}-|", "-".repeat(width), "-".repeat(10));
        for (label, value) in &rows {
            println!("| {label:<width$} | {value:>10} |");
        }
        let p99 = percentile(&self.snapshot_idle, 0.99);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!();
        println!(
            "heartbeats: best {best:.0}/s (target >= {HEARTBEAT_TARGET:.0}/s): {}",
            verdict(best >= HEARTBEAT_TARGET)
        );
        println!(
            "snapshot of {SERVERS}: p50 {} p99 {} over {SNAPSHOTS} requests (target p99 < {}): {}",
            ms(percentile(&self.snapshot_idle, 0.5)),
            ms(p99),
            ms(SNAPSHOT_P99_TARGET),
            verdict(p99 < SNAPSHOT_P99_TARGET)
        );
    }
}
