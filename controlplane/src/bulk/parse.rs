//! Reading an import file, every record checked (route key as the management API
//! derives it, declared destination) and every problem kept with its line number.
//!
//! TSV is the file store's format: `identifier<TAB>destination`, `#` comments, blank
//! lines, fields trimmed. CSV is `identifier,destination` records with an optional
//! header line and RFC 4180 quoting, parsed here by hand (two fields need no crate); a
//! quoted field cannot span lines, since a line break is never valid in an identifier
//! or a destination.

use std::borrow::Cow;
use std::collections::HashMap;

use switchyard_common::routekey::{Identifier, RouteKeyRule, MAX_KEY_LEN};

use super::Format;
use crate::config::Config;

/// A problem and the line it is on.
pub(super) type Problem = (usize, String);

/// Turns identifiers into route keys exactly as the management API does, and knows the
/// declared destinations.
pub(super) struct Checker {
    rule: RouteKeyRule,
    /// Declared destination ids, sorted: entries refer to them by index.
    pub(super) destinations: Vec<String>,
}

impl Checker {
    pub(super) fn new(config: &Config) -> Checker {
        Checker { rule: config.route_key_rule(), destinations: config.destination.keys().cloned().collect() }
    }

    /// The entry for one record, or every problem with it. Problems name destinations
    /// but never identifiers: the line number is enough to find them.
    fn check(&self, identifier: &str, destination: &str) -> Result<(String, u32), Vec<String>> {
        let mut problems = Vec::new();
        // An operator's account name: the login rule, as the API and the file store.
        let key = self.rule.checked_key(&Identifier::Login(identifier.to_owned()));
        if identifier.trim().is_empty() {
            problems.push("empty identifier".to_string());
        } else if identifier.chars().any(char::is_control) {
            problems.push("identifier contains a control character".to_string());
        } else if key.is_none() {
            problems.push(format!("identifier must give a route key of 1..={MAX_KEY_LEN} bytes"));
        }
        let destination = destination.trim();
        let index = self.destinations.binary_search_by(|d| d.as_str().cmp(destination));
        if destination.is_empty() {
            problems.push("empty destination".to_string());
        } else if index.is_err() {
            let shown: String = destination.chars().take(40).collect();
            problems.push(format!("destination {shown:?} is not declared in the config"));
        }
        match (index, key) {
            (Ok(i), Some(key)) if problems.is_empty() => Ok((key, i as u32)),
            _ => Err(problems),
        }
    }
}

/// One valid record: its route key, its destination (index into the declared ones) and
/// the line it came from.
#[derive(Debug)]
pub(super) struct ImportRow {
    pub(super) key: String,
    pub(super) destination: u32,
    pub(super) line: u32,
}

/// Every valid record, first occurrence of each key only, or every problem in the file.
/// `progress` is told how many bytes have been read.
pub(super) fn parse(
    bytes: &[u8],
    format: Format,
    checker: &Checker,
    progress: &dyn Fn(u64),
) -> Result<Vec<ImportRow>, Vec<Problem>> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut first_record = true;
    let mut offset = 0;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        offset += raw.len() + 1;
        if n % 65_536 == 0 {
            progress(offset as u64);
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            problems.push((n, "not valid UTF-8".to_string()));
            continue;
        };
        let fields = match format {
            Format::Tsv => tsv_record(line),
            Format::Csv => csv_record(line).map(|r| r.filter(|f| !(first_record && is_csv_header(f)))),
        };
        if !line.trim().is_empty() {
            first_record = false;
        }
        match fields {
            Ok(None) => {}
            Ok(Some((identifier, destination))) => match checker.check(&identifier, &destination) {
                Ok((key, destination)) => entries.push(ImportRow { key, destination, line: n as u32 }),
                Err(found) => problems.extend(found.into_iter().map(|p| (n, p))),
            },
            Err(problem) => problems.push((n, problem)),
        }
    }
    progress(bytes.len() as u64);
    problems.extend(repeated(&mut entries, &checker.destinations));
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// Drops repeated keys that agree with their first line; a repeat naming another
/// destination is a problem (which line should win is the operator's call).
fn repeated(entries: &mut Vec<ImportRow>, destinations: &[String]) -> Vec<Problem> {
    let mut first: HashMap<&str, (u32, u32)> = HashMap::with_capacity(entries.len());
    let mut problems = Vec::new();
    let mut keep = Vec::with_capacity(entries.len());
    for e in entries.iter() {
        match first.get(e.key.as_str()) {
            None => {
                first.insert(&e.key, (e.destination, e.line));
                keep.push(true);
            }
            Some(&(destination, line)) => {
                if destination != e.destination {
                    let (earlier, here) = (&destinations[destination as usize], &destinations[e.destination as usize]);
                    problems.push((
                        e.line as usize,
                        format!("identifier already mapped to {earlier:?} on line {line} (here {here:?})"),
                    ));
                }
                keep.push(false);
            }
        }
    }
    drop(first);
    let mut keep = keep.into_iter();
    entries.retain(|_| keep.next().unwrap_or(false));
    problems
}

type Record<'a> = Option<(Cow<'a, str>, Cow<'a, str>)>;

/// A TSV line: `None` for blank and comment lines. Fields are trimmed like the file
/// store does; a leading or trailing tab is a missing field, not whitespace.
fn tsv_record(line: &str) -> Result<Record<'_>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let (identifier, destination) =
        line.split_once('\t').ok_or_else(|| "expected identifier<TAB>destination".to_string())?;
    if destination.contains('\t') {
        return Err("more than two tab-separated fields".to_string());
    }
    Ok(Some((Cow::Borrowed(identifier.trim()), Cow::Borrowed(destination.trim()))))
}

/// A CSV line: `None` for a blank line.
fn csv_record(line: &str) -> Result<Record<'_>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let mut fields = csv_fields(line)?;
    if fields.len() != 2 {
        return Err(format!("expected identifier,destination (found {} fields)", fields.len()));
    }
    let destination = fields.pop().unwrap_or_default();
    let identifier = fields.pop().unwrap_or_default();
    Ok(Some((identifier, destination)))
}

fn is_csv_header((identifier, destination): &(Cow<'_, str>, Cow<'_, str>)) -> bool {
    identifier.trim().eq_ignore_ascii_case("identifier") && destination.trim().eq_ignore_ascii_case("destination")
}

/// Splits one CSV line into fields: `"…"` quoting with `""` for a quote inside;
/// whitespace around a field is dropped.
fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let start = rest.trim_start();
        let after = if let Some(mut quoted) = start.strip_prefix('"') {
            let mut value = String::new();
            loop {
                let end = quoted.find('"').ok_or_else(|| "unterminated quoted field".to_string())?;
                value.push_str(&quoted[..end]);
                quoted = &quoted[end + 1..];
                match quoted.strip_prefix('"') {
                    Some(more) => {
                        value.push('"');
                        quoted = more;
                    }
                    None => break,
                }
            }
            fields.push(Cow::Owned(value));
            let after = quoted.trim_start();
            if !after.is_empty() && !after.starts_with(',') {
                return Err("text after a closing quote".to_string());
            }
            after
        } else {
            let end = start.find(',').unwrap_or(start.len());
            let field = start[..end].trim_end();
            if field.contains('"') {
                return Err("quote inside an unquoted field".to_string());
            }
            fields.push(Cow::Borrowed(field));
            &start[end..]
        };
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => return Ok(fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        let rule = RouteKeyRule::default();
        Checker { rule, destinations: vec!["legacy".into(), "new".into()] }
    }

    /// `(key, destination)` of every entry, or the problems as `line N: …` strings.
    fn read(text: &str, format: Format) -> Result<Vec<(String, String)>, Vec<String>> {
        let c = checker();
        match parse(text.as_bytes(), format, &c, &|_| {}) {
            Ok(entries) => {
                Ok(entries.into_iter().map(|e| (e.key, c.destinations[e.destination as usize].clone())).collect())
            }
            Err(problems) => Err(problems.into_iter().map(|(n, p)| format!("line {n}: {p}")).collect()),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, d)| (k.to_string(), d.to_string())).collect()
    }

    #[test]
    fn tsv_with_comments_blank_lines_and_normalization() {
        let text = "\u{feff}# moved so far\n\nAlice@Example.TEST\tnew\r\n  bob@x \t legacy \ncarol%admin\tnew\nalice@example.test\tnew\n";
        let expected = pairs(&[("alice@example.test", "new"), ("bob@x", "legacy"), ("carol", "new")]);
        assert_eq!(read(text, Format::Tsv).unwrap(), expected);
    }

    #[test]
    fn csv_with_header_quoting_and_spaces() {
        let text = "Identifier,Destination\r\n\"Alice@X\",new\n bob@x , \"legacy\" \n\"o\"\"brien,jr@x\",new\n\nidentifier,destination\n";
        // A header only counts on the first line; later it is a record (and a problem).
        assert_eq!(
            read(text, Format::Csv).unwrap_err(),
            ["line 6: destination \"destination\" is not declared in the config"]
        );
        let text = &text[..text.rfind("identifier").unwrap()];
        let expected = pairs(&[("alice@x", "new"), ("bob@x", "legacy"), ("o\"brien,jr@x", "new")]);
        assert_eq!(read(text, Format::Csv).unwrap(), expected);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let tsv = "ok\tnew\nno-tab-here\n\tnew\nsomeone\t\nx\tnowhere\nOK\tlegacy\nbad\u{7}id\tnew\n%admin\tnew\na\tb\tc\n\t\n\tx\t\n";
        assert_eq!(
            read(tsv, Format::Tsv).unwrap_err(),
            [
                "line 2: expected identifier<TAB>destination",
                "line 3: empty identifier",
                "line 4: empty destination",
                "line 5: destination \"nowhere\" is not declared in the config",
                "line 7: identifier contains a control character",
                "line 8: identifier must give a route key of 1..=1024 bytes",
                "line 9: more than two tab-separated fields",
                "line 11: more than two tab-separated fields",
                "line 6: identifier already mapped to \"new\" on line 1 (here \"legacy\")",
            ]
        );
        let csv = "a,new\nb\n\"c,new\n\"d\"x,new\ne,ne\"w\nf,new,extra\n,\ng,legacy\n";
        assert_eq!(
            read(csv, Format::Csv).unwrap_err(),
            [
                "line 2: expected identifier,destination (found 1 fields)",
                "line 3: unterminated quoted field",
                "line 4: text after a closing quote",
                "line 5: quote inside an unquoted field",
                "line 6: expected identifier,destination (found 3 fields)",
                "line 7: empty identifier",
                "line 7: empty destination",
            ]
        );
        let long = format!("{}\tnew\n", "a".repeat(MAX_KEY_LEN + 1));
        assert_eq!(
            read(&long, Format::Tsv).unwrap_err(),
            ["line 1: identifier must give a route key of 1..=1024 bytes"]
        );
    }

    #[test]
    fn invalid_utf8_is_a_problem_of_its_line_only() {
        let c = checker();
        let problems = parse(b"a\tnew\nb\xff\tnew\nc\tlegacy\n", Format::Tsv, &c, &|_| {}).unwrap_err();
        assert_eq!(problems, [(2, "not valid UTF-8".to_string())]);
    }

    #[test]
    fn progress_ends_at_the_file_size() {
        let text = "a\tnew\n".repeat(200_000);
        let seen = std::sync::atomic::AtomicU64::new(0);
        let entries = parse(text.as_bytes(), Format::Tsv, &checker(), &|n| {
            seen.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(entries.len(), 1, "repeats that agree collapse into one entry");
        assert_eq!(seen.into_inner(), text.len() as u64);
    }
}
