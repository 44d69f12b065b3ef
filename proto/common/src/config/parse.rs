//! Strict TOML loading shared by both binaries: every unknown key, type error and
//! validation problem is collected and reported at once, each with its key path.
//!
//! `deny_unknown_fields` stops at the first typo, so instead the file is deserialized with
//! `serde_ignored` (every ignored key becomes a problem) and `serde_path_to_error` (a type
//! error names its key). A type error aborts serde, so the offending key is removed from the
//! parsed tree and deserialization retried; validation problems that the removal itself
//! could have caused are dropped, so the operator sees only real problems.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config (or a secret named by it) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML at all; the message carries line and column.
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// Well-formed TOML with problems, one `key.path: message` per entry.
    #[error("{}", list_problems(problems))]
    Invalid { problems: Vec<String> },
}

impl ConfigError {
    /// The individual problems (empty for IO and syntax errors).
    pub fn problems(&self) -> &[String] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn list_problems(problems: &[String]) -> String {
    let mut out = format!("{} configuration problem(s):", problems.len());
    for p in problems {
        out.push_str("\n  ");
        out.push_str(p);
    }
    out
}

/// Validation findings, each addressed by the key path at fault.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<(String, String)>,
}

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.found.push((path.into(), message.to_string()));
    }
}

/// `parent.key`, quoting the key when it is not a bare TOML key (`destination."a.b"`).
pub fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    path.iter().fold(String::new(), |out, seg| match seg {
        Seg::Key(k) => key_path(&out, k),
        Seg::Index(i) => format!("{out}[{i}]"),
    })
}

fn ignored_segments(path: &serde_ignored::Path, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            ignored_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_segments(parent, out)
        }
    }
}

fn error_segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Seq { index } => Some(Seg::Index(*index)),
            S::Map { key } => Some(Seg::Key(key.clone())),
            S::Enum { .. } | S::Unknown => None,
        })
        .collect()
}

/// Removes the value at `path` (a key in a table); false if there is nothing to remove.
fn remove(tree: &mut toml::Value, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        let next = match (seg, node) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match node {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

/// One path lies inside (or is) the other: `a.b` and `a.b.c[0]`, not `a.b` and `a.bc`.
fn related(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long.strip_prefix(short).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    inside(a, b) || inside(b, a)
}

/// Bounds the retry loop; a real file never gets near it.
const MAX_ATTEMPTS: usize = 64;

/// Parses `text` into `T`, then runs `validate`; all problems come back in one error.
pub fn parse_toml<T: DeserializeOwned>(text: &str, validate: impl FnOnce(&T, &mut Problems)) -> Result<T, ConfigError> {
    let tree = toml::Value::Table(toml::from_str::<toml::Table>(text)?);
    let Deserialized { value, mut problems, removed } = deserialize(tree);
    if let Some(value) = &value {
        let mut checks = Problems::default();
        validate(value, &mut checks);
        let removed: Vec<String> = removed.iter().map(|r| render(r)).collect();
        // A removed key fell back to its default; what validation says about it is noise.
        checks.found.retain(|(path, _)| !removed.iter().any(|r| related(path, r)));
        problems.found.extend(checks.found);
    }
    match value {
        Some(value) if problems.found.is_empty() => Ok(value),
        _ => {
            problems.found.sort_by(|a, b| a.0.cmp(&b.0));
            let problems = problems.found.into_iter().map(format_problem).collect();
            Err(ConfigError::Invalid { problems })
        }
    }
}

struct Deserialized<T> {
    /// `None` when a problem could not be worked around by removing its key.
    value: Option<T>,
    problems: Problems,
    /// Keys taken out of the tree to get past type errors.
    removed: Vec<Vec<Seg>>,
}

/// Deserializes `tree`, removing each key with a type error and retrying, so that one
/// bad value does not hide the problems after it.
fn deserialize<T: DeserializeOwned>(mut tree: toml::Value) -> Deserialized<T> {
    let mut unknown = BTreeSet::new();
    let mut problems = Problems::default();
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    let mut value = None;
    for attempt in 0.. {
        if attempt == MAX_ATTEMPTS {
            problems.push("", "too many problems; only the first ones are listed");
            break;
        }
        let mut on_ignored = |p: serde_ignored::Path| {
            let mut segs = Vec::new();
            ignored_segments(&p, &mut segs);
            unknown.insert(render(&segs));
        };
        let de = serde_ignored::Deserializer::new(tree.clone(), &mut on_ignored);
        let err = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(err) => err,
        };
        let at = error_segments(err.path());
        let message = error_message(err.inner());
        if !is_removal_artifact(&at, &message, &removed) {
            problems.push(render(&at), message);
        }
        // An array is dropped whole: removing one element would shift the indices that
        // later problems in the same array are reported with.
        let mut target = at;
        while matches!(target.last(), Some(Seg::Index(_))) {
            target.pop();
        }
        if !remove(&mut tree, &target) {
            break;
        }
        removed.push(target);
    }
    for key in unknown {
        problems.push(key, "unknown key");
    }
    Deserialized { value, problems, removed }
}

fn error_message(err: &toml::de::Error) -> String {
    let mut message = err.to_string();
    // toml appends "\nin `key`"; the path is already in front of the message.
    if let Some(i) = message.find("\nin `") {
        message.truncate(i);
    }
    let mut message = message.trim().to_owned();
    if message.ends_with("expected a duration") {
        message.push_str(" such as \"30s\", \"10m\" or \"1h\"");
    }
    message
}

/// `missing field` errors for a key this loop removed itself are not the operator's.
fn is_removal_artifact(at: &[Seg], message: &str, removed: &[Vec<Seg>]) -> bool {
    let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) else {
        return false;
    };
    let mut path = at.to_vec();
    path.push(Seg::Key(field.to_owned()));
    removed.contains(&path)
}

fn format_problem((path, message): (String, String)) -> String {
    if path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// Reads a file into a string, naming the file in the error.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })
}

/// A shared secret: the environment variable `env` wins when set and non-empty (the
/// documented override for secrets), else the trimmed contents of `file`, else `None`.
pub fn load_token(file: Option<&Path>, env: &str) -> Result<Option<String>, ConfigError> {
    let invalid = |p: String| ConfigError::Invalid { problems: vec![p] };
    if !env.is_empty() {
        match std::env::var(env) {
            Ok(v) if !v.trim().is_empty() => return Ok(Some(v.trim().to_owned())),
            Ok(_) | Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => return Err(invalid(format!("${env}: not valid UTF-8"))),
        }
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let token = read_file(file)?.trim().to_owned();
    if token.is_empty() {
        return Err(invalid(format!("{}: the token file is empty", file.display())));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(key_path("", "listener"), "listener");
        assert_eq!(key_path("listener", "imap-1"), "listener.imap-1");
        assert_eq!(key_path("destination", "a.b"), "destination.\"a.b\"");
        let segs = [Seg::Key("listener".into()), Seg::Key("x".into()), Seg::Key("bind".into()), Seg::Index(2)];
        assert_eq!(render(&segs), "listener.x.bind[2]");
    }

    #[test]
    fn related_respects_key_boundaries() {
        assert!(related("a.b", "a.b"));
        assert!(related("a.b.c", "a.b"));
        assert!(related("a.b", "a.b[0]"));
        assert!(!related("a.bc", "a.b"));
        assert!(!related("a.b", "a.c"));
    }

    #[test]
    fn remove_takes_out_nested_keys_only_when_present() {
        let mut tree = toml::Value::Table(toml::from_str("[a.b]\nc = 1\nd = [1]").unwrap());
        let path = |keys: &[&str]| keys.iter().map(|k| Seg::Key((*k).into())).collect::<Vec<_>>();
        assert!(remove(&mut tree, &path(&["a", "b", "c"])));
        assert!(!remove(&mut tree, &path(&["a", "b", "c"])));
        assert!(!remove(&mut tree, &path(&["a", "x", "d"])));
        assert!(!remove(&mut tree, &[]));
        assert_eq!(tree.to_string(), "{ a = { b = { d = [1] } } }");
    }
}
