//! The one `tether` binary: parses the command line and hands over to the
//! library crates (`tether-discovery`, `tether-proxy`, `tether-sampleapp`,
//! the demo in `src/demo/`). Nothing here decides anything about locks.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tether", version, about = "Keeps clients of a geo-distributed app locked to the right server")]
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
    },
    /// Run the central discovery service.
    Discovery {
        /// Discovery config file (TOML), e.g. conf/discovery.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (proxy or discovery) and exit.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Run the sample backend app (an unmodified app with a replicated store).
    SampleApp(tether_sampleapp::cli::Args),
    /// Write fresh random secrets (key ring, cluster token, admin token).
    Keygen {
        /// Directory to write into, e.g. conf/secrets.
        #[arg(long, default_value = "conf/secrets")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Mint or inspect tokens (for operators).
    #[command(subcommand)]
    Token(TokenCommand),
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
    init_logging();
    let result = match cli.command {
        Command::Proxy { config } => run_proxy(&config),
        Command::Discovery { config } => run_discovery(&config),
        Command::Check { file } => check(&file),
        Command::SampleApp(args) => tether_sampleapp::cli::run(args).map_err(anyhow::Error::from),
        Command::Keygen { dir, force } => keygen(&dir, force),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

fn run_proxy(path: &std::path::Path) -> anyhow::Result<()> {
    let config = tether_proxy::config::load(path)?;
    // Pingora owns the process from here: its own runtimes, signals and
    // graceful shutdown.
    tether_proxy::run(config)?;
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

fn keygen(dir: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let written = tether_proxy::secrets::generate(dir, force)?;
    if written.is_empty() {
        println!("{}: secrets already exist (use --force to replace them)", dir.display());
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint { config, sub, srv, region, home } => {
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
