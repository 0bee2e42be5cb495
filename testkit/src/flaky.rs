//! A misbehaving upstream: a bare HTTP/1.1 server on a raw socket that
//! fails in one chosen way, to test what a proxy does with upstream
//! failures (retries on a fresh connection, 502, 504). `GET /health` is
//! always answered `200` and the connection closed, so a proxy's health
//! check keeps it in rotation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the upstream fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Answers the first request of each connection (keep-alive, no
    /// `Connection: close`), then closes the connection as soon as the
    /// next request arrives, without answering it: the keep-alive race,
    /// every time a connection is reused.
    DropOnReuse,
    /// Reads the request and never answers.
    Hang,
    /// Sends part of a response head, then closes.
    CutHead,
}

pub struct FlakyUpstream {
    pub addr: SocketAddr,
    /// Application requests answered in full (health checks not counted).
    pub answered: Arc<AtomicUsize>,
    /// Application requests read and dropped unanswered.
    pub dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyUpstream {
    /// Binds 127.0.0.1:0 and serves with `flaw`.
    pub async fn start(flaw: Flaw) -> FlakyUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind flaky upstream");
        let addr = listener.local_addr().expect("addr");
        let answered = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (answered, dropped) = (answered.clone(), dropped.clone());
            async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(sock, flaw, answered.clone(), dropped.clone()));
                }
            }
        });
        FlakyUpstream {
            addr,
            answered,
            dropped,
            task,
        }
    }

    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body); `None` at EOF or
/// on a malformed head. Returns the request line.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    head.lines().next().map(str::to_owned)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n";

async fn serve(
    mut sock: TcpStream,
    flaw: Flaw,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut served = 0usize;
    while let Some(line) = read_request(&mut sock, &mut buf).await {
        if line.starts_with("GET /health") {
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                .await;
            return;
        }
        match flaw {
            Flaw::DropOnReuse if served == 0 => {
                if sock.write_all(OK).await.is_err() {
                    return;
                }
                served += 1;
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Flaw::DropOnReuse => {
                dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Flaw::Hang => {
                dropped.fetch_add(1, Ordering::SeqCst);
                // Hold the socket open until the peer gives up.
                let mut sink = [0u8; 1024];
                while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Flaw::CutHead => {
                dropped.fetch_add(1, Ordering::SeqCst);
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                return;
            }
        }
    }
}
