//! The command line both binaries share: `--config FILE [--check]`.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Path to the TOML config file
    #[arg(long, short)]
    pub config: PathBuf,
    /// Validate the config and exit
    #[arg(long)]
    pub check: bool,
}

impl Args {
    /// Parses the process arguments; `name` and `about` make each binary's `--help` its own.
    pub fn parse_for(name: &'static str, about: &'static str) -> Args {
        let matches = Args::command().name(name).about(about).get_matches();
        Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
