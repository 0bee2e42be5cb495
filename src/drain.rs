//! `tether drain <server-id>` / `tether drain --undo <server-id>`: the
//! operator's drain mark at discovery's admin API (docs/design.md §6, §11).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The server to drain (its `[server] id`, e.g. eu-1).
    pub server_id: String,
    /// Remove the drain mark instead (`DELETE`); also `tether undrain`.
    #[arg(long)]
    pub undo: bool,
    /// Discovery's base URL (else $TETHER_DISCOVERY_URL).
    #[arg(long)]
    pub discovery: Option<String>,
    /// A file holding discovery's admin token (else $TETHER_ADMIN_TOKEN).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
}

/// The admin token: from the file when given, else from the environment.
fn admin_token(args: &DrainArgs) -> anyhow::Result<String> {
    let token = match &args.admin_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?,
        None => match std::env::var("TETHER_ADMIN_TOKEN") {
            Ok(t) => t,
            Err(_) => bail!(
                "no admin token: pass --admin-token-file FILE or set TETHER_ADMIN_TOKEN (discovery's [auth] admin token)"
            ),
        },
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the admin token is empty");
    }
    Ok(token)
}

pub fn run(args: DrainArgs) -> anyhow::Result<()> {
    let base = args
        .discovery
        .clone()
        .or_else(|| std::env::var("TETHER_DISCOVERY_URL").ok());
    let Some(base) = base.as_deref() else {
        bail!("no discovery URL: pass --discovery URL or set TETHER_DISCOVERY_URL");
    };
    let base = base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--discovery {base:?}: expected an http:// or https:// URL");
    }
    let id = &args.server_id;
    if tether_protocol::validate::server_id("server-id", id).is_err() {
        bail!("{id:?} is not a server id (letters, digits, '.', '_', '-')");
    }
    let token = admin_token(&args)?;
    let url = format!("{base}/v1/servers/{id}/drain");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let req = if args.undo {
            http.delete(&url)
        } else {
            http.post(&url)
        };
        let resp = req
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| format!("cannot reach discovery at {base}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    let what = if args.undo { "undrain" } else { "drain" };
    match status.as_u16() {
        200 => {
            let draining = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("draining").and_then(serde_json::Value::as_bool));
            match (args.undo, draining) {
                (false, _) => println!(
                    "{id}: draining. Proxies place no new client there; clients move at their next refresh (those in a critical task when it ends). Watch tether_proxy_locked_clients{{server=\"{id}\"}} go to 0."
                ),
                (true, Some(true)) => println!(
                    "{id}: drain mark removed, but the server still reports draining itself (it is shutting down)"
                ),
                (true, _) => println!("{id}: no longer draining"),
            }
            Ok(())
        }
        401 => bail!("{what} {id}: discovery refused the admin token (401)"),
        404 => bail!("{what} {id}: discovery lists no live server {id:?} (404)"),
        s => bail!(
            "{what} {id}: discovery answered {s}: {}",
            body.chars().take(300).collect::<String>()
        ),
    }
}
