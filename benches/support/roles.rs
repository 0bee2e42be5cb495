//! The parts the bench binary plays when it re-executes itself with
//! `TETHER_BENCH_ROLE`: a plain Pingora pass-through, a tiny upstream,
//! tether in-process under the counting allocator, and the load generator.

use std::path::Path;

use tether_testkit::alloc::publish_process_count;

use super::loadgen::{find, LoadSpec};
use super::ROLE;

/// Call first in `main`: when this process was started to play a role,
/// plays it and never returns.
pub fn run_role_if_asked() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{role}: {k} not set"));
    match role.as_str() {
        "passthrough" => {
            if let Ok(path) = std::env::var("TETHER_BENCH_ALLOC_FILE") {
                publish_process_count(Path::new(&path));
            }
            passthrough::run(
                &env("TETHER_BENCH_LISTEN"),
                env("TETHER_BENCH_UPSTREAM").parse().expect("upstream"),
            )
        }
        "tether-counted" => {
            publish_process_count(Path::new(&env("TETHER_BENCH_ALLOC_FILE")));
            let cfg =
                tether_proxy::config::load(Path::new(&env("TETHER_BENCH_CONFIG"))).expect("config");
            if let Err(e) = tether_proxy::run(cfg) {
                eprintln!("tether: {e}");
                std::process::exit(1);
            }
            std::process::exit(0)
        }
        "upstream" => tiny_upstream(&env("TETHER_BENCH_LISTEN")),
        "loadgen" => {
            let spec: LoadSpec =
                serde_json::from_str(&env("TETHER_BENCH_LOAD")).expect("load spec");
            let result = super::loadgen::run(&spec);
            println!("{}", serde_json::to_string(&result).expect("json"));
            std::process::exit(0)
        }
        other => panic!("unknown {ROLE} {other:?}"),
    }
}

/// The plain Pingora pass-through: no tether logic, the same runtime
/// settings as `tether_proxy::run` (one worker thread, no work stealing,
/// upstream keep-alive pool).
mod passthrough {
    use std::net::SocketAddr;
    use std::time::Duration;

    use async_trait::async_trait;
    use pingora_core::server::configuration::ServerConf;
    use pingora_core::server::Server;
    use pingora_core::upstreams::peer::HttpPeer;
    use pingora_proxy::{ProxyHttp, Session};

    struct Pass {
        upstream: SocketAddr,
        /// `TETHER_BENCH_PASS_TIMEOUTS=1`: the upstream timeouts tether
        /// sets by default (connect 1 s, read 30 s, idle 1.5 s), to tell
        /// what those cost from what tether itself does (docs/benchmarks.md,
        /// "Allocations").
        timeouts: bool,
    }

    #[async_trait]
    impl ProxyHttp for Pass {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(
            &self,
            _s: &mut Session,
            _c: &mut (),
        ) -> pingora_core::Result<Box<HttpPeer>> {
            let mut peer = HttpPeer::new(self.upstream, false, String::new());
            if self.timeouts {
                peer.options.connection_timeout = Some(Duration::from_millis(1000));
                peer.options.read_timeout = Some(Duration::from_millis(30_000));
                peer.options.idle_timeout = Some(Duration::from_millis(1500));
            }
            Ok(Box::new(peer))
        }
    }

    pub fn run(listen: &str, upstream: SocketAddr) -> ! {
        let mut conf = ServerConf {
            threads: 1,
            work_stealing: false,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        conf.upstream_keepalive_pool_size = 256;
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut svc = pingora_proxy::http_proxy_service(
            &server.configuration,
            Pass {
                upstream,
                timeouts: std::env::var("TETHER_BENCH_PASS_TIMEOUTS").as_deref() == Ok("1"),
            },
        );
        svc.add_tcp(listen);
        server.add_service(svc);
        println!("pass-through listening on {listen}");
        server.run_forever()
    }
}

/// A minimal keep-alive HTTP/1.1 server answering 200 "ok" to anything
/// (including `/health`), for when nginx is not installed.
fn tiny_upstream(listen: &str) -> ! {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind upstream");
        println!("upstream listening on {listen}");
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = sock.read(&mut buf[have..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    // Answer every complete request in the buffer (head, and
                    // its Content-Length body for the POST rows).
                    let mut out = Vec::new();
                    let mut start = 0;
                    while let Some(end) = find(&buf[start..have], b"\r\n\r\n") {
                        let body = content_length(&buf[start..start + end]);
                        if start + end + 4 + body > have {
                            break; // the body is still on its way
                        }
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n");
                        start += end + 4 + body;
                    }
                    buf.copy_within(start..have, 0);
                    have -= start;
                    if have == buf.len() || sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// The Content-Length of a request head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}
