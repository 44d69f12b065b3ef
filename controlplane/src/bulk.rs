//! Bulk import and export of mappings (`controlplane mappings import|export`): a file is
//! checked whole before anything is written, only new and changed mappings are written,
//! and they reach the store as one bulk change so nodes flush their caches once.
//!
//! Formats: TSV as the file store reads it and CSV (see [`parse`]); export writes
//! either, in key order.

mod export;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use export::export;
use indicatif::{ProgressBar, ProgressStyle};
use parse::{parse, Checker, ImportRow, Problem};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{Mapping, Store, StoreError};

/// Problems listed before "… and N more": a file in the wrong format has one per line.
const MAX_PROBLEMS: usize = 20;
/// Lines of each kind a dry run shows.
const SAMPLES: usize = 10;
/// Mappings per `list` page while comparing and exporting.
const PAGE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Tsv,
    Csv,
}

impl Format {
    /// `.csv` (any case) is CSV; anything else, and stdout, is TSV.
    pub fn for_path(path: Option<&Path>) -> Format {
        match path.and_then(Path::extension) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Tsv,
        }
    }
}

#[derive(Debug)]
pub struct ImportOptions<'a> {
    pub file: &'a Path,
    pub format: Option<Format>,
    pub dry_run: bool,
    /// Progress bars on stderr (indicatif hides them anyway when it is not a terminal).
    pub progress: bool,
}

/// What an import found and did; its `Display` is the report printed to the operator.
#[derive(Debug)]
pub struct Imported {
    pub file: PathBuf,
    pub added: usize,
    pub changed: usize,
    pub unchanged: usize,
    /// `None` for a dry run or when there was nothing to write.
    pub revision: Option<u64>,
    pub dry_run: bool,
    /// A dry run's first lines of each kind ("would add …", "would change …").
    pub samples: Vec<String>,
}

impl fmt::Display for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, a, c, u) = (self.file.display(), self.added, self.changed, self.unchanged);
        if self.dry_run {
            write!(f, "dry run of {file}: {a} to add, {c} to change, {u} unchanged; nothing written")?;
            return self.samples.iter().try_for_each(|line| write!(f, "\n  {line}"));
        }
        match self.revision {
            Some(revision) => write!(f, "imported {file}: {a} added, {c} changed, {u} unchanged; revision {revision}"),
            None => write!(f, "imported {file}: 0 added, 0 changed, {u} unchanged; nothing to write"),
        }
    }
}

/// Reads, checks, compares with the store and (unless a dry run) writes the difference.
/// Any problem in the file refuses the whole import, listing the lines at fault.
pub async fn import(config: &Config, options: &ImportOptions<'_>) -> Result<Imported> {
    let file = options.file;
    let format = options.format.unwrap_or_else(|| Format::for_path(Some(file)));
    let bytes = tokio::fs::read(file).await.map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    let checker = Checker::new(config);
    let reading = bar(options.progress, Some(bytes.len() as u64), "checking");
    let bar_for_parse = reading.clone();
    let (parsed, destinations) = tokio::task::spawn_blocking(move || {
        let parsed = parse(&bytes, format, &checker, &|n| bar_for_parse.set_position(n));
        (parsed, checker.destinations)
    })
    .await
    .map_err(|e| Error::Config(format!("checking {}: {e}", file.display())))?;
    reading.finish_and_clear();
    let entries = parsed.map_err(|problems| refused(file, problems))?;

    let store = Store::open(&config.mapping, &config.route_key_rule()).await?;
    if !options.dry_run && !store.is_writable() {
        return Err(StoreError::ReadOnly.into());
    }
    let comparing = bar(options.progress, None, "comparing");
    let diff = compare(&store, &entries, &destinations, &comparing).await?;
    comparing.finish_and_clear();
    let mut imported = Imported {
        file: file.to_owned(),
        added: diff.added,
        changed: diff.changed,
        unchanged: entries.len() - diff.added - diff.changed,
        revision: None,
        dry_run: options.dry_run,
        samples: Vec::new(),
    };
    if options.dry_run {
        imported.samples = samples(&entries, &diff.status, &destinations);
        return Ok(imported);
    }
    let mut rows: Vec<Mapping> = entries
        .into_iter()
        .zip(diff.status)
        .filter(|(_, s)| !matches!(s, Status::Unchanged))
        .map(|(e, _)| Mapping { key: e.key, destination: destinations[e.destination as usize].clone() })
        .collect();
    if rows.is_empty() {
        return Ok(imported);
    }
    // Key order writes each B-tree page once instead of hopping across the index.
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let writing = bar(options.progress, Some(rows.len() as u64), "writing");
    let revision = store.import(&rows, &|n| writing.set_position(n)).await?;
    writing.finish_and_clear();
    imported.revision = Some(revision);
    Ok(imported)
}

/// The import refused: every problem by line, capped.
fn refused(file: &Path, mut problems: Vec<Problem>) -> Error {
    problems.sort_by_key(|(line, _)| *line);
    let total = problems.len();
    let mut text = format!("{}: import refused, nothing written ({total} problems):", file.display());
    for (line, problem) in problems.iter().take(MAX_PROBLEMS) {
        text.push_str(&format!("\n  line {line}: {problem}"));
    }
    if total > MAX_PROBLEMS {
        text.push_str(&format!("\n  … and {} more", total - MAX_PROBLEMS));
    }
    Error::BadRequest(text)
}

/// Where each entry stands against the store.
enum Status {
    Added,
    Changed(String),
    Unchanged,
}

struct Diff {
    status: Vec<Status>,
    added: usize,
    changed: usize,
}

/// Pages through the store once, looking every stored key up in the file's entries:
/// only the file is held in memory, and the store's key order does not matter.
async fn compare(store: &Store, entries: &[ImportRow], destinations: &[String], bar: &ProgressBar) -> Result<Diff> {
    let index: HashMap<&str, usize> = entries.iter().enumerate().map(|(i, e)| (e.key.as_str(), i)).collect();
    let mut status: Vec<Status> = entries.iter().map(|_| Status::Added).collect();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), PAGE).await?;
        for m in &page {
            if let Some(&i) = index.get(m.key.as_str()) {
                let same = destinations[entries[i].destination as usize] == m.destination;
                status[i] = if same { Status::Unchanged } else { Status::Changed(m.destination.clone()) };
            }
        }
        bar.inc(page.len() as u64);
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.key.clone()),
            _ => break,
        }
    }
    let added = status.iter().filter(|s| matches!(s, Status::Added)).count();
    let changed = status.iter().filter(|s| matches!(s, Status::Changed(_))).count();
    Ok(Diff { status, added, changed })
}

/// The first [`SAMPLES`] additions and changes in file order, then how many more.
fn samples(entries: &[ImportRow], status: &[Status], destinations: &[String]) -> Vec<String> {
    let mut adds = Vec::new();
    let mut changes = Vec::new();
    for (e, s) in entries.iter().zip(status) {
        let new = &destinations[e.destination as usize];
        match s {
            Status::Added => adds.push(format!("would add {} → {new}", e.key)),
            Status::Changed(old) => changes.push(format!("would change {}: {old} → {new}", e.key)),
            Status::Unchanged => {}
        }
    }
    let mut lines = Vec::new();
    for (mut kind, what) in [(adds, "additions"), (changes, "changes")] {
        let more = kind.len().saturating_sub(SAMPLES);
        kind.truncate(SAMPLES);
        lines.extend(kind);
        if more > 0 {
            lines.push(format!("… and {more} more {what}"));
        }
    }
    lines
}

/// A progress bar on stderr, or a hidden one.
fn bar(show: bool, len: Option<u64>, prefix: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(len) => (ProgressBar::new(len), "{prefix:>9} [{bar:40}] {percent:>3}% {elapsed} (eta {eta})"),
        None => (ProgressBar::new_spinner(), "{prefix:>9} {spinner} {pos} mappings {elapsed}"),
    };
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.with_style(style.progress_chars("=> ")).with_prefix(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let toml = format!(
            "[routing]\ndefault_destination = \"legacy\"\n[mapping.sqlite]\npath = \"{}\"\n\
             [destination.legacy]\nhost = \"10.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n\
             [destination.new]\nhost = \"10.0.0.2\"\n[destination.new.protocol.imap]\nport = 143\n",
            dir.join("m.db").display()
        );
        Config::from_toml_str(&toml).unwrap()
    }

    async fn run(config: &Config, file: &Path, dry_run: bool) -> Result<Imported> {
        import(config, &ImportOptions { file, format: None, dry_run, progress: false }).await
    }

    #[tokio::test]
    async fn dry_run_then_import_writes_only_the_difference_as_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
        store.put("bob@x", "legacy").await.unwrap();
        store.put("carol@x", "new").await.unwrap();
        let file = dir.path().join("m.tsv");
        std::fs::write(&file, "Alice@X\tnew\nbob@x\tnew\ncarol@x\tnew\ndave@x\tlegacy\n").unwrap();

        let dry = run(&config, &file, true).await.unwrap();
        assert_eq!((dry.added, dry.changed, dry.unchanged, dry.revision), (2, 1, 1, None));
        assert_eq!(
            dry.samples,
            ["would add alice@x → new", "would add dave@x → legacy", "would change bob@x: legacy → new"]
        );
        assert!(dry
            .to_string()
            .starts_with(&format!("dry run of {}: 2 to add, 1 to change, 1 unchanged;", file.display())));
        assert_eq!(store.revision().await.unwrap(), 2, "a dry run writes nothing");

        let done = run(&config, &file, false).await.unwrap();
        assert_eq!((done.added, done.changed, done.unchanged, done.revision), (2, 1, 1, Some(3)));
        let changes = store.changes_since(2, 10).await.unwrap().unwrap();
        assert!(changes.len() == 1 && changes[0].is_bulk(), "{changes:?}");
        assert_eq!(store.get("bob@x").await.unwrap().as_deref(), Some("new"));
        assert_eq!(store.get("alice@x").await.unwrap().as_deref(), Some("new"));

        let again = run(&config, &file, false).await.unwrap();
        assert_eq!((again.added, again.changed, again.unchanged, again.revision), (0, 0, 4, None));
        assert_eq!(store.revision().await.unwrap(), 3, "nothing to write, no change recorded");
    }

    #[tokio::test]
    async fn a_bad_file_is_refused_whole_with_a_capped_list() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let file = dir.path().join("m.csv");
        let mut text = "identifier,destination\nalice@x,new\n".to_string();
        text.extend((0..25).map(|i| format!("user{i}@x,nowhere\n")));
        std::fs::write(&file, text).unwrap();
        let err = run(&config, &file, false).await.unwrap_err().to_string();
        assert!(
            err.contains("import refused, nothing written (25 problems):\n  line 3: destination \"nowhere\""),
            "{err}"
        );
        assert!(err.contains("line 22:") && !err.contains("line 23:") && err.ends_with("… and 5 more"), "{err}");
        let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
        assert_eq!(store.revision().await.unwrap(), 0);
        assert!(store.get("alice@x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn export_then_import_round_trips_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
        for (key, destination) in [("a,b@x", "new"), ("q\"uote@x", "legacy"), ("#hash@x", "new"), ("plain@x", "legacy")]
        {
            store.put(key, destination).await.unwrap();
        }
        let csv = dir.path().join("out.CSV");
        assert_eq!(export(&config, Some(&csv), None).await.unwrap(), 4);
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(
            text,
            "identifier,destination\n#hash@x,new\n\"a,b@x\",new\nplain@x,legacy\n\"q\"\"uote@x\",legacy\n"
        );
        let again = run(&config, &csv, false).await.unwrap();
        assert_eq!((again.added, again.changed, again.unchanged), (0, 0, 4));

        // TSV cannot carry a key that reads back as a comment: refused, no file left.
        let tsv = dir.path().join("out.tsv");
        let err = export(&config, Some(&tsv), None).await.unwrap_err();
        assert!(err.to_string().contains("export as CSV"), "{err}");
        assert!(!tsv.exists() && !dir.path().join("out.tsv.partial").exists());
        store.delete("#hash@x").await.unwrap();
        assert_eq!(export(&config, Some(&tsv), None).await.unwrap(), 3);
        let text = std::fs::read_to_string(&tsv).unwrap();
        assert!(text.starts_with('#') && text.ends_with("a,b@x\tnew\nplain@x\tlegacy\nq\"uote@x\tlegacy\n"), "{text}");
    }
}
