//! A recording upstream: a bare HTTP/1.1 server that answers every request
//! `200 OK` with a small body and keeps the raw bytes of each request as
//! they arrived, so a test can check exactly what a proxy sent (header
//! order, duplicates, casing, smuggling attempts).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of every answer.
pub const BODY: &str = "recorded\n";

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Head and body, byte for byte.
    pub raw: Vec<u8>,
    /// Length of the head including its blank line.
    pub head_len: usize,
}

impl Recorded {
    /// The head (request line and header lines), lossily decoded.
    pub fn head(&self) -> String {
        String::from_utf8_lossy(&self.raw[..self.head_len]).into_owned()
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[self.head_len..]
    }

    /// The request target of the request line.
    pub fn target(&self) -> String {
        self.head()
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head()
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// Builds the answer (status, content type, body) to a recorded request.
pub type Answer = Arc<dyn Fn(&Recorded) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

/// The server; stops when dropped.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    /// Binds 127.0.0.1:0 and serves (keep-alive, Content-Length and
    /// chunked request bodies).
    pub async fn start() -> RecordingUpstream {
        RecordingUpstream::start_answering(Arc::new(|_: &Recorded| {
            (200, "text/plain", BODY.as_bytes().to_vec())
        }))
        .await
    }

    /// Like [`RecordingUpstream::start`], answering each request with
    /// `answer` (a login answer a test chooses, say).
    pub async fn start_answering(answer: Answer) -> RecordingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recording upstream");
        let addr = listener.local_addr().expect("addr");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let recorded = recorded.clone();
            async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(sock, recorded.clone(), answer.clone()));
                }
            }
        });
        RecordingUpstream {
            addr,
            recorded,
            task,
        }
    }

    /// Every request so far, health checks included.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }

    /// Every request so far except `GET /health` (a proxy's health checks).
    pub fn app_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| !r.head().starts_with("GET /health "))
            .collect()
    }

    pub fn clear(&self) {
        self.recorded.lock().expect("lock").clear();
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    answer: Answer,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // One request: the head, then its body.
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
        let header = |name: &str| {
            head.split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let end = loop {
            let have = &buf[head_len..];
            let done = if chunked {
                find(have, b"0\r\n\r\n").map(|i| head_len + i + 5)
            } else if have.len() >= length {
                Some(head_len + length)
            } else {
                None
            };
            if let Some(end) = done {
                break end;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let request = Recorded {
            raw: buf[..end].to_vec(),
            head_len,
        };
        let (status, content_type, body) = answer(&request);
        recorded.lock().expect("lock").push(request);
        buf.drain(..end);
        let mut out = format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
