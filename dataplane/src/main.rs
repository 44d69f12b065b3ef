//! `dataplane --config FILE [--check]`: load, validate, bind, run.

use anyhow::Context;
use dataplane::cli::Args;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_for("dataplane", "Switchyard data-plane node");
    let config = dataplane::config::Config::load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    dataplane::telemetry::init(&config.node.log_level);
    let token =
        dataplane::config::load_token(config.control.node_token_file.as_deref(), &config.control.node_token_env)?;
    let bound = dataplane::bind(&config).await.context("binding listeners")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(dataplane::telemetry::shutdown_on_signal(shutdown.clone()));
    dataplane::run(config, bound, token, shutdown).await?;
    Ok(())
}
