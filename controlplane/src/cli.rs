//! The control plane's command line: `controlplane --config FILE [--check]` runs (or
//! checks) the control plane; `mappings import|export` work on its mapping store.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::bulk::Format;

#[derive(Parser, Debug)]
#[command(name = "controlplane", version, about = "Switchyard control plane")]
pub struct Args {
    /// Path to the TOML config file
    #[arg(long, short)]
    pub config: PathBuf,
    /// Validate the config and exit
    #[arg(long)]
    pub check: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Bulk operations on the mapping store named by the config
    #[command(subcommand)]
    Mappings(Mappings),
}

#[derive(Subcommand, Debug)]
pub enum Mappings {
    /// Import mappings from a TSV or CSV file: every line is checked before anything is
    /// written, and only new or changed mappings are written, as one bulk change
    Import(ImportArgs),
    /// Export every mapping in key order (to stdout without FILE)
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// `identifier<TAB>destination` lines (TSV) or `identifier,destination` records (CSV)
    pub file: PathBuf,
    /// File format; by default `.csv` files are CSV and anything else TSV
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Check the file and print what would change, without writing anything
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal)
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Where to write; stdout when absent
    pub file: Option<PathBuf>,
    /// File format; by default from FILE's extension (`.csv` is CSV), else TSV
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

impl Args {
    /// Parses the process arguments (exits with usage on error).
    pub fn parse_args() -> Args {
        Args::checked(Args::try_parse()).unwrap_or_else(|e| e.exit())
    }

    /// Refuses what clap cannot express: `--check` together with a subcommand.
    fn checked(args: Result<Args, clap::Error>) -> Result<Args, clap::Error> {
        let args = args?;
        if args.check && args.command.is_some() {
            use clap::CommandFactory;
            let message = "--check cannot be combined with a subcommand";
            return Err(Args::command().error(clap::error::ErrorKind::ArgumentConflict, message));
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::checked(Args::try_parse_from(std::iter::once("controlplane").chain(args.iter().copied())))
    }

    #[test]
    fn the_plain_form_is_unchanged() {
        let args = parse(&["--config", "cp.toml"]).unwrap();
        assert_eq!(args.config, PathBuf::from("cp.toml"));
        assert!(!args.check && args.command.is_none());
        let args = parse(&["-c", "cp.toml", "--check"]).unwrap();
        assert!(args.check);
        assert!(parse(&["--check"]).is_err(), "--config is required");
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn import_and_export_subcommands() {
        let args =
            parse(&["--config", "cp.toml", "mappings", "import", "m.csv", "--dry-run", "--format", "tsv"]).unwrap();
        let Some(Command::Mappings(Mappings::Import(import))) = args.command else { panic!("{args:?}") };
        assert_eq!(import.file, PathBuf::from("m.csv"));
        assert_eq!(import.format, Some(Format::Tsv));
        assert!(import.dry_run && !import.no_progress);

        let args = parse(&["--config", "cp.toml", "mappings", "export"]).unwrap();
        let Some(Command::Mappings(Mappings::Export(export))) = args.command else { panic!("{args:?}") };
        assert_eq!((export.file, export.format), (None, None));

        let args = parse(&["-c", "cp.toml", "mappings", "export", "out.csv", "--format", "csv"]).unwrap();
        let Some(Command::Mappings(Mappings::Export(export))) = args.command else { panic!("{args:?}") };
        assert_eq!(export.file, Some(PathBuf::from("out.csv")));
        assert_eq!(export.format, Some(Format::Csv));

        assert!(parse(&["mappings", "import", "m.tsv"]).is_err(), "--config is required");
        assert!(parse(&["-c", "cp.toml", "mappings", "import"]).is_err(), "FILE is required");
        assert!(parse(&["-c", "cp.toml", "mappings", "import", "m", "--format", "xml"]).is_err());
        assert!(parse(&["-c", "cp.toml", "--check", "mappings", "export"]).is_err());
    }
}
