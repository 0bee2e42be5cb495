//! Starting the proxy: the wiring of its services. Pingora owns the
//! process (runtimes, signals, graceful shutdown); this file only builds
//! the services and hands them over.

use std::collections::HashMap;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use tether_protocol::wire::Snapshot;

use crate::config::ProxyConfig;
use crate::registry::RegistryView;
use crate::service::TetherProxy;
use crate::state::{Error, State};
use crate::{admin, guard, lifecycle, sync, tls, upstream};

/// Runs the proxy until SIGTERM/SIGINT (or SIGQUIT after an upgrade
/// handover). Pingora owns the process: its runtimes and graceful
/// shutdown; the signals go through [`lifecycle::Signals`].
pub fn run(cfg: ProxyConfig) -> Result<(), Error> {
    run_with(cfg, false)
}

/// [`run`]; with `upgrade`, the listening sockets are taken over from the
/// running process, which hands them over on SIGQUIT (`lifecycle`).
pub fn run_with(cfg: ProxyConfig, upgrade: bool) -> Result<(), Error> {
    let lc = &cfg.lifecycle;
    if upgrade {
        lifecycle::check_upgrade_socket(lc).map_err(Error::Upgrade)?;
    } else {
        // Pingora binds when the server runs, and retries a taken port
        // for half a minute before panicking: check every listener first,
        // so a taken port is one clear error line and exit 1. (With
        // --upgrade the running process holds them: that is the point.)
        for addr in [cfg.listen, cfg.admin_listen] {
            std::net::TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
        }
    }
    let mut conf = ServerConf {
        threads: cfg.worker_threads.get(),
        // Measured on 2-core machines: no work stealing keeps a request on
        // one thread and avoids cross-thread wake-ups (shared/notes).
        work_stealing: false,
        // After the listeners close (the health grace is before, in
        // `lifecycle::Signals`): requests in flight get the timeout; the
        // runtimes then stop within a second.
        grace_period_seconds: Some(lc.shutdown_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: lc.upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 256;
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        println!(
            "waiting for the running proxy's sockets on {} (send it SIGQUIT)",
            lc.upgrade_socket.display()
        );
    }
    server.bootstrap();

    let (lb, resolve_metrics) =
        upstream::build(&cfg.upstream).map_err(|e| Error::Upstream(e.to_string()))?;
    let lb_service = background_service("upstream health checks", lb);
    let lb = lb_service.task();

    let listen = cfg.listen.to_string();
    let admin_listen = cfg.admin_listen.to_string();
    let state = State::new(cfg, lb)?;
    state.metrics.register(resolve_metrics.failures);
    state.metrics.register(resolve_metrics.addresses);
    // Until discovery answers, the registry holds this server alone.
    let me = &state.cfg.server.id;
    let initial = RegistryView::new(
        Snapshot::default(),
        me,
        || state.self_entry(),
        HashMap::new(),
    );
    state.registry.store(initial);

    // The background work, one service each (`sync`).
    let heartbeats = background_service(
        "heartbeats",
        sync::Heartbeats {
            state: state.clone(),
        },
    );
    let poller = background_service(
        "registry poller",
        sync::Poller {
            state: state.clone(),
        },
    );
    let reloader = background_service(
        "key-ring reloader",
        sync::KeyRingReloader {
            state: state.clone(),
        },
    );
    let sampler = background_service(
        "load sampler",
        sync::LoadSampler {
            state: state.clone(),
        },
    );

    // Pingora's HTTP proxy app, behind the connection caps and the
    // request-head deadline (`guard`).
    let mut app = pingora_proxy::http_proxy(
        &server.configuration,
        TetherProxy {
            state: state.clone(),
        },
    );
    let limits = &state.cfg.limits;
    app.h2_options = Some(crate::http2::options(
        limits.max_request_headers,
        limits.max_request_header_bytes,
    ));
    app.server_options = Some(crate::http2::server_options(limits.h2_idle_timeout));
    let m = &state.metrics;
    let guarded = guard::Guard::new(
        app,
        guard::ConnLimits {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            header_read_timeout: limits.header_read_timeout,
        },
        guard::GuardMetrics {
            open: m.connections_open.clone(),
            refused_total: m.connections_refused_total.clone(),
            refused_per_ip: m.connections_refused_per_ip.clone(),
            header_timeouts: m.header_timeouts.clone(),
        },
    );
    let mut proxy =
        pingora_core::services::listening::Service::new("tether proxy".to_owned(), guarded);
    match &state.cfg.tls {
        Some(files) => {
            let settings = tls::settings(&files.cert, &files.key, files.http2)
                .map_err(|e| Error::Tls(e.to_string()))?;
            proxy.add_tls_with_settings(&listen, None, settings);
        }
        None => proxy.add_tcp(&listen),
    }

    let mut admin = pingora_core::services::listening::Service::new(
        "tether admin".to_owned(),
        admin::Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&admin_listen);

    server.add_service(lb_service);
    server.add_service(heartbeats);
    server.add_service(poller);
    server.add_service(reloader);
    server.add_service(sampler);
    server.add_service(background_service(
        "lifecycle watcher",
        lifecycle::Watcher {
            lifecycle: state.lifecycle.clone(),
            connections_open: state.metrics.connections_open.clone(),
        },
    ));
    server.add_service(proxy);
    server.add_service(admin);
    tracing::info!(
        id = %state.cfg.server.id,
        region = %state.cfg.server.region,
        %listen,
        admin = %admin_listen,
        "tether proxy starting"
    );
    println!(
        "tether proxy {} listening on http://{listen} admin http://{admin_listen}",
        state.cfg.server.id
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals {
            cfg: state.cfg.lifecycle.clone(),
            lifecycle: state.lifecycle.clone(),
        }),
    });
    std::process::exit(0)
}
