//! `dataplane --config FILE [--check]`: load, validate, bind, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Switchyard data-plane node")]
struct Args {
    /// Path to dataplane.toml
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the config and exit
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = dataplane::config::Config::load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    dataplane::telemetry::init(&config.node.log_level);
    let token = dataplane::config::load_token(
        config.control.node_token_file.as_deref(),
        &config.control.node_token_env,
    )?;
    let bound = dataplane::bind(&config)
        .await
        .context("binding listeners")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(dataplane::telemetry::shutdown_on_signal(shutdown.clone()));
    dataplane::run(config, bound, token, shutdown).await?;
    Ok(())
}
