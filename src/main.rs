//! The one `tether` binary: parses the command line and hands over to the
//! library crates (`tether-discovery`, `tether-proxy`, `tether-sampleapp`,
//! the demo in `src/demo/`). Nothing here decides anything about locks.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod drain;

// mimalloc: fewer instructions per allocation than glibc malloc on the
// proxy's request path, where Pingora allocates tens of times per request
// (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Keeps clients of a geo-distributed app locked to the right server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the lock-enforcing edge proxy for one server.
    Proxy {
        /// Proxy config file (TOML), e.g. conf/proxy.eu.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the running proxy (zero-
        /// downtime upgrade): waits on `server.upgrade_socket` until the
        /// old process is sent SIGQUIT. See docs/deploy.md, "Upgrading".
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the central discovery service.
    Discovery {
        /// Discovery config file (TOML), e.g. conf/discovery.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Drain a server at discovery: no new clients are placed there, its
    /// clients move at their next refresh (`--undo` removes the mark).
    Drain(drain::DrainArgs),
    /// Remove a drain mark (`tether drain --undo`).
    Undrain(drain::DrainArgs),
    /// Validate a config file (proxy or discovery) and exit.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Run the sample backend app (an unmodified app with a replicated store).
    SampleApp(tether_sampleapp::cli::Args),
    /// Run the three-region demo: geo routing alone, then tether, then
    /// tether with one region's proxy killed. Prints a table.
    Demo(DemoArgs),
    /// Load-test a tether deployment with SDK clients running workflows.
    Bench(BenchArgs),
    /// Write fresh random secrets (key ring, cluster token, admin token).
    Keygen {
        /// Directory to write into, e.g. conf/secrets.
        #[arg(long, default_value = "conf/secrets")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Key-ring algorithm: "hs256" (shared secret) or "eddsa" (Ed25519).
        #[arg(long, default_value = "hs256")]
        alg: String,
    },
    /// Mint or inspect tokens (for operators).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Print the summary as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Start the cluster and its live web page, print their URLs and keep
    /// them up until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// With --serve: where the live page listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    page_listen: std::net::SocketAddr,
    /// With --serve: simulated clients kept busy for the page to show (0:
    /// none, e.g. under `tether bench`).
    #[arg(long, default_value_t = tether_demo::CROWD)]
    crowd: usize,
    /// Simulated clients per phase.
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    phase_seconds: u64,
    /// Replication lag between regions, ms.
    #[arg(long, default_value_t = 1500)]
    lag_ms: u64,
    /// Random extra replication delay, ms.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// Chance that a client jumps region before a step (0-1).
    #[arg(long, default_value_t = 0.3)]
    jump: f64,
    /// Switch off fast failover (a dead server is replaced after eviction).
    #[arg(long)]
    no_fast_failover: bool,
    /// Discovery heartbeat interval, ms.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// Discovery eviction TTL, ms.
    #[arg(long, default_value_t = 2000)]
    ttl_ms: u64,
    /// The client's "Reconnecting…" wait, ms.
    #[arg(long, default_value_t = 1000)]
    reconnect_wait_ms: u64,
    /// The region whose proxy is killed in phase 3.
    #[arg(long, default_value = "us")]
    kill_region: String,
    /// Discovery's store: "memory" (one node) or "etcd" (a three-member
    /// etcd cluster and two discovery nodes; needs `etcd` on PATH).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Add a fourth phase: every discovery node down for 75 s, longer
    /// than the access-token lifetime (set to 60 s for the run) and its
    /// 10 s clock leeway.
    #[arg(long)]
    discovery_outage: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The deployment's global URL (a proxy, or the geo-DNS name).
    #[arg(long)]
    global_url: String,
    /// Simulated clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// "locked" (requests to the locked server) or "global" (through the
    /// global URL, following 421s).
    #[arg(long, default_value = "locked")]
    routing: String,
    /// Users are <prefix>0000, <prefix>0001, …
    #[arg(long, default_value = "user-")]
    user_prefix: String,
    #[arg(long, default_value = "demo")]
    password: String,
    /// Think time between workflow steps, ms.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an access + refresh token pair with a proxy's config and keys.
    Mint {
        /// Proxy config whose issuer, audience, lifetimes and keys are used.
        #[arg(long, short)]
        config: PathBuf,
        /// Subject (user id).
        #[arg(long)]
        sub: String,
        /// Locked server id (default: the config's server).
        #[arg(long)]
        srv: Option<String>,
        /// Region of the locked server (default: the config's region).
        #[arg(long)]
        region: Option<String>,
        /// Home region claim.
        #[arg(long)]
        home: Option<String>,
    },
    /// Decode a token; with --config, also verify it.
    Inspect {
        token: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints a table; keep library chatter out of it.
    init_logging(
        if matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
            "warn"
        } else {
            "info"
        },
        log_json(&cli.command),
    );
    exit_with_parent();
    let result = match cli.command {
        Command::Proxy { config, upgrade } => run_proxy(&config, upgrade),
        Command::Discovery { config } => run_discovery(&config),
        Command::Check { file } => check(&file),
        Command::Drain(args) => drain::run(args),
        Command::Undrain(args) => drain::run(drain::DrainArgs { undo: true, ..args }),
        Command::SampleApp(args) => tether_sampleapp::cli::run(args).map_err(anyhow::Error::from),
        Command::Demo(args) => demo(args),
        Command::Bench(args) => bench(args),
        Command::Keygen { dir, force, alg } => keygen(&dir, force, &alg),
        Command::Token(cmd) => token(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter: `TETHER_LOG`, else the usual `RUST_LOG`, else
/// `default`. JSON lines (one object per event) when `json`.
fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// JSON logs: `TETHER_LOG_FORMAT=json|text`, else a proxy config's
/// `[log] format`.
fn log_json(command: &Command) -> bool {
    use tether_proxy::access::LogFormat;
    let from_env = std::env::var("TETHER_LOG_FORMAT")
        .ok()
        .and_then(|v| LogFormat::parse(v.trim()));
    let format = from_env.or_else(|| match command {
        Command::Proxy { config, .. } => tether_proxy::access::format_in_file(config),
        _ => None,
    });
    format == Some(LogFormat::Json)
}

fn run_discovery(path: &std::path::Path) -> anyhow::Result<()> {
    let config = tether_discovery::config::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()?;
    rt.block_on(tether_discovery::run(config))?;
    Ok(())
}

fn run_proxy(path: &std::path::Path, upgrade: bool) -> anyhow::Result<()> {
    let config = tether_proxy::config::load(path)?;
    // Pingora owns the process from here: its own runtimes, signals and
    // graceful shutdown.
    tether_proxy::server::run_with(config, upgrade)?;
    Ok(())
}

/// Which kind of config a file is, from its top-level table.
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", path.display()))?;
    // A proxy config has a [server] table (and a [discovery] table that
    // says how to reach discovery), so look for [server] first.
    if table.contains_key("server") {
        tether_proxy::config::parse(&text, path)?;
        println!("{}: ok (proxy config)", path.display());
    } else if table.contains_key("discovery") {
        tether_discovery::config::parse(&text, path)?;
        println!("{}: ok (discovery config)", path.display());
    } else {
        anyhow::bail!(
            "{}: cannot tell what this config is for: expected a [server] table (proxy) or a [discovery] table (discovery)",
            path.display()
        );
    }
    Ok(())
}

fn keygen(dir: &std::path::Path, force: bool, alg: &str) -> anyhow::Result<()> {
    let alg = match alg {
        "hs256" => tether_proxy::secrets::KeyAlg::Hs256,
        "eddsa" => tether_proxy::secrets::KeyAlg::EdDsa,
        other => anyhow::bail!("--alg {other:?}: must be \"hs256\" or \"eddsa\""),
    };
    let written = tether_proxy::secrets::generate_with(dir, force, alg)?;
    if written.is_empty() {
        println!(
            "{}: secrets already exist (use --force to replace them)",
            dir.display()
        );
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint {
            config,
            sub,
            srv,
            region,
            home,
        } => {
            let cfg = tether_proxy::config::load(&config)?;
            let tokens = tether_proxy::tokens::Tokens::new(&cfg.tokens);
            let minted = tokens.mint(
                &sub,
                tether_proxy::tokens::LockTarget {
                    server_id: srv.as_deref().unwrap_or(&cfg.server.id),
                    region: region.as_deref().unwrap_or(&cfg.server.region),
                },
                home.as_deref(),
                None,
            )?;
            let out = serde_json::json!({
                "accessToken": minted.access,
                "refreshToken": minted.refresh,
                "expiresIn": minted.expires_in,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        TokenCommand::Inspect { token, config } => {
            let decoded = tether_proxy::tokens::inspect(&token)?;
            println!("{}", serde_json::to_string_pretty(&decoded)?);
            if let Some(config) = config {
                let cfg = tether_proxy::config::load(&config)?;
                let tokens = tether_proxy::tokens::Tokens::new(&cfg.tokens);
                let verdict = match decoded["header"]["typ"].as_str() {
                    Some("rt+jwt") => tokens.verify_refresh(&token).map(|_| ()),
                    _ => tokens.verify_access(&token).map(|_| ()),
                };
                match verdict {
                    Ok(()) => println!("verified: ok"),
                    Err(e) => anyhow::bail!("verification failed: {}", e.detail()),
                }
            }
        }
    }
    Ok(())
}

/// With `TETHER_EXIT_WITH_PARENT=1` (set by `tether demo` for its
/// children), exit when stdin closes: the parent died or let go, so no
/// process outlives the demo even if the demo itself is killed.
fn exit_with_parent() {
    if std::env::var_os("TETHER_EXIT_WITH_PARENT").is_some_and(|v| v == "1") {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            // Any outcome (EOF or error) means the parent is gone.
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        });
    }
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use std::time::Duration;
    let opts = tether_demo::DemoOptions {
        clients: args.clients,
        phase: Duration::from_secs(args.phase_seconds),
        lag: Duration::from_millis(args.lag_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        jump_probability: args.jump,
        fast_failover: !args.no_fast_failover,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        ttl: Duration::from_millis(args.ttl_ms),
        reconnect_wait: Duration::from_millis(args.reconnect_wait_ms),
        kill_region: args.kill_region,
        store_etcd: match args.store.as_str() {
            "memory" => false,
            "etcd" => true,
            other => anyhow::bail!("--store {other:?}: must be \"memory\" or \"etcd\""),
        },
        discovery_outage: args.discovery_outage.then(|| Duration::from_secs(75)),
        ..tether_demo::DemoOptions::default()
    };
    if args.serve {
        tether_demo::serve(&opts, args.page_listen, args.crowd)?;
        return Ok(());
    }
    let summary = tether_demo::run(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", tether_demo::table(&summary));
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let routing = match args.routing.as_str() {
        "locked" => tether_client::Routing::Locked,
        "global" => tether_client::Routing::Global,
        other => anyhow::bail!("--routing {other:?}: must be \"locked\" or \"global\""),
    };
    let report = tether_demo::bench::run(&tether_demo::bench::BenchOptions {
        global_url: args.global_url.trim_end_matches('/').to_owned(),
        clients: args.clients,
        duration: std::time::Duration::from_secs(args.seconds),
        routing,
        user_prefix: args.user_prefix,
        password: args.password,
        think: std::time::Duration::from_millis(args.think_ms),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", tether_demo::bench::table(&report));
    }
    Ok(())
}
