//! Loopback addresses and ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago and that nobody answers
/// on. Pingora binds by address (with SO_REUSEPORT, so a leftover instance
/// would silently share a port), so the kit reserves ports this way; the
/// window for a clash is tiny.
pub fn free_port() -> u16 {
    // The kernel may hand out the same ephemeral port again as soon as the
    // probe listener is closed, so two calls in a row (an etcd member's
    // client and peer ports, say) could get one port: never give a port
    // twice in one process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if TcpStream::connect_timeout(&addr(port), Duration::from_millis(100)).is_err() {
            given.push(port);
            return port;
        }
    }
}

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until a TCP connect to `addr` succeeds; false after `within`.
pub async fn port_open(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits until a TCP connect to `addr` succeeds, or panics.
pub async fn wait_for_port(addr: SocketAddr, within: Duration) {
    assert!(
        port_open(addr, within).await,
        "{addr} did not start listening"
    );
}
