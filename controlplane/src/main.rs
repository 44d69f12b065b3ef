//! `controlplane --config FILE [--check]`: load, validate, bind, run; and
//! `controlplane --config FILE mappings import|export …` on the configured store.

use anyhow::Context;
use controlplane::cli::{Args, Command, Mappings};
use controlplane::config::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_args();
    let config = Config::load(&args.config)?;
    match args.command {
        Some(Command::Mappings(command)) => mappings(&config, command).await,
        None if args.check => {
            println!("{}: ok", args.config.display());
            Ok(())
        }
        None => serve(config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    switchyard_common::telemetry::init(&config.server.log_level);
    let secrets = controlplane::Secrets::load(&config)?;
    let bound = controlplane::bind(&config).await.context("binding listeners")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(switchyard_common::telemetry::shutdown_on_signal(shutdown.clone()));
    controlplane::run(config, bound, secrets, shutdown).await?;
    Ok(())
}

async fn mappings(config: &Config, command: Mappings) -> anyhow::Result<()> {
    use controlplane::bulk;
    match command {
        Mappings::Import(a) => {
            let options =
                bulk::ImportOptions { file: &a.file, format: a.format, dry_run: a.dry_run, progress: !a.no_progress };
            println!("{}", bulk::import(config, &options).await?);
        }
        Mappings::Export(a) => {
            let count = bulk::export(config, a.file.as_deref(), a.format).await?;
            let to = a.file.as_ref().map_or_else(|| "stdout".to_string(), |f| f.display().to_string());
            eprintln!("exported {count} mappings to {to}");
        }
    }
    Ok(())
}
