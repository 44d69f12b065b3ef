//! `controlplane --config FILE [--check]`: load, validate, bind, run.

use anyhow::Context;
use dataplane::cli::Args;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_for("controlplane", "Switchyard control plane");
    let config = controlplane::config::Config::load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    dataplane::telemetry::init(&config.server.log_level);
    let secrets = controlplane::Secrets::load(&config)?;
    let bound = controlplane::bind(&config).await.context("binding listeners")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(dataplane::telemetry::shutdown_on_signal(shutdown.clone()));
    controlplane::run(config, bound, secrets, shutdown).await?;
    Ok(())
}
