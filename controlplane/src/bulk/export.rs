//! Exporting: every mapping in key order, paged from the store and streamed out.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Format, PAGE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;

/// Writes every mapping in key order to `file` (through a `.partial` file renamed at
/// the end, so a failed export leaves no half file) or to stdout. Returns the count.
pub async fn export(config: &Config, file: Option<&Path>, format: Option<Format>) -> Result<u64> {
    let format = format.unwrap_or_else(|| Format::for_path(file));
    let store = Store::open(&config.mapping, &config.route_key_rule()).await?;
    let Some(path) = file else {
        return write_all(&store, format, BufWriter::new(std::io::stdout())).await;
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let out = std::fs::File::create(&partial).map_err(|e| Error::Config(format!("{}: {e}", partial.display())))?;
    match write_all(&store, format, BufWriter::new(out)).await {
        Ok(count) => {
            std::fs::rename(&partial, path)?;
            Ok(count)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn write_all<W: Write>(store: &Store, format: Format, mut out: W) -> Result<u64> {
    match format {
        Format::Tsv => writeln!(out, "# identifier<TAB>destination, exported by switchyard")?,
        Format::Csv => writeln!(out, "identifier,destination")?,
    }
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), PAGE).await?;
        for m in &page {
            match format {
                Format::Tsv if m.key.contains(['\t', '\n', '\r']) || m.key.trim_start().starts_with('#') => {
                    return Err(Error::BadRequest(format!(
                        "mapping {:?} cannot be written as TSV; export as CSV",
                        m.key
                    )))
                }
                Format::Tsv => writeln!(out, "{}\t{}", m.key, m.destination)?,
                Format::Csv => writeln!(out, "{},{}", csv_quote(&m.key), csv_quote(&m.destination))?,
            }
        }
        count += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.key.clone()),
            _ => break,
        }
    }
    out.flush()?;
    Ok(count)
}

/// A CSV field, quoted when it holds a separator, a quote, a line break or edge spaces.
fn csv_quote(field: &str) -> Cow<'_, str> {
    let plain = !field.contains([',', '"', '\n', '\r']) && field.trim() == field;
    if plain {
        Cow::Borrowed(field)
    } else {
        Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    }
}
