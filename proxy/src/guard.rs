//! Connection-level protection in front of Pingora's HTTP handling: caps
//! on concurrent client connections (in total and per client IP) and a
//! deadline for receiving each request head (slowloris).
//!
//! Pingora times out each *read* (60 s), which a client sending one byte
//! every few seconds never trips: it can hold a connection, a task and a
//! buffer for as long as it likes. So the client listener runs
//! [`Guard`] around Pingora's HTTP proxy app:
//!
//! - at accept, the connection takes a slot; with no slot free (in total,
//!   or for its IP) it gets a `503 too_many_connections` and is closed
//!   before anything is read;
//! - the stream is wrapped in [`HeadDeadline`], which watches the bytes
//!   Pingora reads: from the first byte of a request (for a connection's
//!   first request: from accept) to the blank line that ends its head,
//!   at most `header_read_timeout` may pass, however the bytes trickle in.
//!   The body and the response are not under this deadline (Pingora's
//!   per-read timeout applies), nor is the idle time between keep-alive
//!   requests (Pingora's keep-alive timeout applies).
//!
//! The wrapper sees plaintext: with TLS it wraps the stream after the
//! handshake (which Pingora bounds at 60 s itself). It relies on HTTP/1.x
//! without pipelining (Pingora's default, and the only mode tether
//! enables): a response head written by the proxy means the next bytes
//! the client sends start a new request. On an HTTP/2 connection (ALPN
//! `h2`) the deadline covers the client preface, which ends with a blank
//! line, and no more (see `http2`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The limits [`Guard`] enforces (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Concurrent client connections in all.
    pub max_connections: usize,
    /// Concurrent client connections from one IP (0: no per-IP cap).
    pub max_connections_per_ip: usize,
    /// From the first byte of a request to the end of its head.
    pub header_read_timeout: Duration,
}

/// The counters [`Guard`] keeps up to date.
#[derive(Clone)]
pub struct GuardMetrics {
    pub open: IntGauge,
    pub refused_total: IntCounter,
    pub refused_per_ip: IntCounter,
    pub header_timeouts: IntCounter,
}

/// A [`ServerApp`] that admits connections under the caps and puts each
/// one's request heads under a deadline before handing it to `inner`.
pub struct Guard<A> {
    inner: Arc<A>,
    limits: ConnLimits,
    slots: Slots,
    metrics: GuardMetrics,
}

impl<A> Guard<A> {
    pub fn new(inner: A, limits: ConnLimits, metrics: GuardMetrics) -> Self {
        Guard {
            inner: Arc::new(inner),
            limits,
            slots: Slots::default(),
            metrics,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = match self.slots.admit(ip, &self.limits, &self.metrics.open) {
            Ok(slot) => slot,
            Err(cap) => {
                let detail = match cap {
                    Cap::Total => {
                        self.metrics.refused_total.inc();
                        "this server is at its connection limit; retry shortly"
                    }
                    Cap::PerIp => {
                        self.metrics.refused_per_ip.inc();
                        "too many connections from your address; close some and retry"
                    }
                };
                refuse(stream, detail).await;
                return None;
            }
        };
        let stream: Stream = Box::new(HeadDeadline::new(
            stream,
            self.limits.header_read_timeout,
            self.metrics.header_timeouts.clone(),
        ));
        // Keep-alive reuse stays inside this call so the slot is held for
        // the connection's whole life, not per request.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Total,
    PerIp,
}

/// Connection counts: a lock-free total, and a map per IP only when a
/// per-IP cap is set (one short lock per accepted connection, none per
/// request).
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A held connection slot; dropping it frees the slot.
struct Slot<'a> {
    slots: &'a Slots,
    ip: Option<IpAddr>,
    gauge: &'a IntGauge,
}

impl Slots {
    fn admit<'a>(
        &'a self,
        ip: Option<IpAddr>,
        limits: &ConnLimits,
        gauge: &'a IntGauge,
    ) -> Result<Slot<'a>, Cap> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::Total);
        }
        let tracked = match ip {
            Some(ip) if limits.max_connections_per_ip > 0 => {
                let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                let n = map.entry(ip).or_insert(0);
                if *n >= limits.max_connections_per_ip {
                    drop(map);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err(Cap::PerIp);
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        gauge.inc();
        Ok(Slot {
            slots: self,
            ip: tracked,
            gauge,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.slots.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Answers `503 too_many_connections` and closes, without reading the
/// request (bounded: 1 s to write, then up to 1 s / 64 KiB of draining so
/// the client sees the answer rather than a reset).
async fn refuse(mut stream: Stream, detail: &str) {
    let body = tether_protocol::wire::ErrorBody::new("too_many_connections")
        .detail(detail)
        .to_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nretry-after: 1\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let wrote = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.flush().await
    })
    .await;
    if matches!(wrote, Ok(Ok(()))) {
        Shutdown::shutdown(&mut *stream).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < 64 * 1024 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
}

/// Where a connection is in the request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: no deadline until the next request's first byte.
    Idle,
    /// Reading a request head, under the deadline.
    Head,
    /// Head complete: body and response, no head deadline.
    Past,
    /// The deadline passed; every later read fails.
    Expired,
}

/// A stream that fails reads once a request head has taken longer than
/// the deadline to arrive. See the module documentation.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    /// When the head being read is due (meaningful in [`Phase::Head`]).
    due: Instant,
    /// Wakes a read that waits past `due`; allocated once per connection
    /// and only re-armed when a read actually has to wait, so a request
    /// whose head arrives in one read never touches the timer.
    sleep: Pin<Box<Sleep>>,
    phase: Phase,
    scanner: HeadScanner,
    timeouts: IntCounter,
}

/// Finds the blank line that ends a request head, fed in arbitrary
/// pieces (CRLF or bare LF line ends, as HTTP parsers accept). Public for
/// the `http_head` fuzz target.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScanner {
    /// Bytes in the current line so far.
    line_len: usize,
    /// The current line so far is exactly "\r".
    line_is_cr: bool,
    /// The head has had a non-empty line.
    seen_line: bool,
}

impl HeadScanner {
    /// True once the head's end has been seen (the bytes after it, if
    /// any, are not looked at).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let seg = &bytes[start..nl];
            let len = self.line_len + seg.len();
            let blank = len == 0
                || (len == 1
                    && if seg.is_empty() {
                        self.line_is_cr
                    } else {
                        seg == b"\r"
                    });
            if blank {
                // Leading blank lines before a request line are skipped
                // by parsers; only a blank line after one ends the head.
                if self.seen_line {
                    return true;
                }
            } else {
                self.seen_line = true;
            }
            self.line_len = 0;
            self.line_is_cr = false;
            start = nl + 1;
        }
        let rest = &bytes[start..];
        if !rest.is_empty() {
            self.line_len += rest.len();
            self.line_is_cr = self.line_len == 1 && rest == b"\r";
        }
        false
    }
}

impl HeadDeadline {
    /// Wraps a freshly accepted stream: its first request head is due
    /// within `timeout` from now.
    pub fn new(inner: Stream, timeout: Duration, timeouts: IntCounter) -> Self {
        let due = Instant::now() + timeout;
        HeadDeadline {
            inner,
            timeout,
            due,
            sleep: Box::pin(tokio::time::sleep_until(due)),
            phase: Phase::Head,
            scanner: HeadScanner::default(),
            timeouts,
        }
    }

    fn start_head(&mut self) {
        self.phase = Phase::Head;
        self.scanner = HeadScanner::default();
        self.due = Instant::now() + self.timeout;
    }

    fn expire(&mut self) -> io::Error {
        if self.phase != Phase::Expired {
            self.phase = Phase::Expired;
            self.timeouts.inc();
        }
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request head not received within {} ms",
                self.timeout.as_millis()
            ),
        )
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Expired => return Poll::Ready(Err(this.expire())),
            // A client that keeps dripping bytes is always Ready, so the
            // timer alone would never fire: check the clock as well.
            Phase::Head if Instant::now() >= this.due => {
                return Poll::Ready(Err(this.expire()));
            }
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if this.phase == Phase::Idle {
                        this.start_head();
                    }
                    if this.phase == Phase::Head && this.scanner.feed(new) {
                        this.phase = Phase::Past;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase == Phase::Head {
                    if this.sleep.deadline() != this.due {
                        let due = this.due;
                        this.sleep.as_mut().reset(due);
                    }
                    if std::future::Future::poll(this.sleep.as_mut(), cx).is_ready() {
                        return Poll::Ready(Err(this.expire()));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A final (non-1xx) response head: the client's next bytes are a
        // new request. (Pingora writes a response head in one buffer.)
        if this.phase != Phase::Expired
            && buf.len() > 9
            && buf.starts_with(b"HTTP/1.")
            && buf[9] != b'1'
        {
            this.phase = Phase::Idle;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_after(chunks: &[&[u8]]) -> Option<usize> {
        let mut s = HeadScanner::default();
        chunks.iter().position(|c| s.feed(c))
    }

    #[test]
    fn finds_the_end_of_a_head_however_it_is_split() {
        let head = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(ends_after(&[head]), Some(0));
        // Every split point, byte by byte included.
        for cut in 1..head.len() {
            let (a, b) = head.split_at(cut);
            assert_eq!(ends_after(&[a, b]), Some(1), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(ends_after(&bytes), Some(head.len() - 1));
        // Bare LF line ends.
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
    }

    #[test]
    fn the_http2_preface_ends_the_head() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(ends_after(&[preface]), Some(0));
        // With the client's SETTINGS frame in the same read.
        let mut with_settings = preface.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(ends_after(&[&with_settings]), Some(0));
    }

    #[test]
    fn an_unfinished_head_or_leading_blank_lines_do_not_end_it() {
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(ends_after(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(ends_after(&[b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(1));
        // "\r" alone inside a line is not a blank line.
        assert_eq!(ends_after(&[b"GET / HTTP/1.1\r\nX: \r\r\n"]), None);
        assert_eq!(
            ends_after(&[b"GET / HTTP/1.1\r\nX: a\r\n\r", b"\n"]),
            Some(1)
        );
    }

    #[test]
    fn slots_are_capped_in_total_and_per_ip_and_freed_on_drop() {
        let slots = Slots::default();
        let gauge = IntGauge::new("g", "g").unwrap();
        let limits = ConnLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            header_read_timeout: Duration::from_secs(1),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = slots.admit(Some(a), &limits, &gauge).unwrap();
        let s2 = slots.admit(Some(a), &limits, &gauge).unwrap();
        assert_eq!(
            slots.admit(Some(a), &limits, &gauge).err(),
            Some(Cap::PerIp)
        );
        let s3 = slots.admit(Some(b), &limits, &gauge).unwrap();
        assert_eq!(slots.admit(None, &limits, &gauge).err(), Some(Cap::Total));
        assert_eq!(gauge.get(), 3);
        drop(s1);
        let s4 = slots.admit(Some(a), &limits, &gauge).unwrap();
        drop((s2, s3, s4));
        assert_eq!(gauge.get(), 0);
        assert_eq!(slots.open.load(Ordering::Relaxed), 0);
        assert!(slots.per_ip.lock().unwrap().is_empty());
    }
}
