//! `tether sample-app`: run the sample app's regions until SIGINT/SIGTERM.

use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use crate::cluster::{ClusterConfig, SampleCluster};
use crate::users::DEFAULT_USERS;
use crate::Error;

/// Command-line flags of `tether sample-app`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Region codes, comma-separated; one HTTP listener per region.
    #[arg(long, value_delimiter = ',', default_value = "eu,us,ap")]
    pub regions: Vec<String>,
    /// Address every listener binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_host: IpAddr,
    /// First port; region i listens on base+i. 0: ephemeral ports.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Replication lag between regions, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub lag_ms: u64,
    /// Extra random replication delay, uniform in 0..=jitter, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub jitter_ms: u64,
    /// Number of numbered seed users (user-0000, user-0001, …).
    #[arg(long, default_value_t = DEFAULT_USERS)]
    pub users: usize,
}

impl Args {
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            regions: self.regions.clone(),
            listen_host: self.listen_host,
            base_port: self.base_port,
            lag: Duration::from_millis(self.lag_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            users: self.users,
        }
    }
}

/// Starts the regions, prints one ready line per region to stdout
/// (`tether sample-app region=<code> listening on http://IP:PORT`) once all
/// are bound, and serves until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<(), Error> {
    let config = args.config();
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let result = rt.block_on(async move {
        // Handlers first: a SIGTERM right after the ready lines must not
        // hit the default action.
        let signal = shutdown_signal()?;
        let cluster = SampleCluster::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            for region in cluster.regions() {
                let url = cluster.url(region).unwrap_or_default();
                writeln!(out, "tether sample-app region={region} listening on {url}")
                    .map_err(Error::Stdout)?;
            }
            out.flush().map_err(Error::Stdout)?;
        }
        signal.await;
        tracing::info!("sample app shutting down");
        cluster.shutdown().await;
        tracing::debug!("sample app stopped");
        Ok(())
    });
    // Nothing should be left running; do not hang on exit if something is.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Installs the SIGINT/SIGTERM handlers now; the future completes on the
/// first of them.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot wait for Ctrl-C; stopping");
        }
    })
}
