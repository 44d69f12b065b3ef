//! The read-only file mapping store: TSV lines `identifier<TAB>destination`, `#` comments
//! and blank lines ignored, loaded once at start. Each identifier is keyed by the same
//! route key rule as logins and the API (`Alice%admin` is alice's line).
//!
//! It has no history: its revision is always 0 and its epoch is a hash of the path and
//! contents, so a restart with an unchanged file keeps node caches while an edited file
//! (a new epoch) makes nodes flush.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use switchyard_common::routekey::{Identifier, RouteKeyRule, MAX_KEY_LEN};

use super::{Change, Mapping, StoreError};

/// Beyond this, listing more malformed lines would only bury the first ones (a file in
/// the wrong format has a problem on every line).
const MAX_REPORTED: usize = 50;

#[derive(Debug, Clone)]
pub struct FileStore {
    mappings: Arc<BTreeMap<String, String>>,
    epoch: Arc<str>,
}

impl FileStore {
    pub async fn open(path: &Path, rule: &RouteKeyRule) -> Result<FileStore, StoreError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let mappings =
            parse(&text, rule).map_err(|problems| StoreError::Malformed { path: path.to_owned(), problems })?;
        let mut hash = Sha256::new();
        hash.update(path.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        let digest: String = hash.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(FileStore { mappings: Arc::new(mappings), epoch: format!("file-{digest}").into() })
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.mappings.get(key).cloned()
    }

    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<Mapping> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, Excluded);
        self.mappings
            .range::<str, _>((start, Unbounded))
            .take(limit)
            .map(|(key, destination)| Mapping { key: key.clone(), destination: destination.clone() })
            .collect()
    }

    /// Nothing ever changes after revision 0; any other revision is from elsewhere.
    pub fn changes_since(&self, revision: u64) -> Option<Vec<Change>> {
        (revision == 0).then(Vec::new)
    }

    pub fn epoch(&self) -> Arc<str> {
        Arc::clone(&self.epoch)
    }

    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }
}

/// Parses the whole file, collecting every malformed line. Messages name lines, never
/// identifiers: account names stay out of logs.
fn parse(text: &str, rule: &RouteKeyRule) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut mappings = BTreeMap::new();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        // Only blank/comment detection trims: a leading or trailing tab is a field
        // separator with a missing field, not whitespace to drop.
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((identifier, destination)) = line.split_once('\t') else {
            problems.push(format!("line {n}: expected identifier<TAB>destination"));
            continue;
        };
        let (identifier, destination) = (identifier.trim(), destination.trim());
        if identifier.is_empty() {
            problems.push(format!("line {n}: empty identifier"));
        } else if destination.is_empty() {
            problems.push(format!("line {n}: empty destination"));
        } else if destination.contains(char::is_whitespace) {
            problems.push(format!("line {n}: destination contains whitespace"));
        } else if let Some(key) = rule.checked_key(&Identifier::Login(identifier.to_owned())) {
            // The same account twice is harmless if both lines agree.
            match mappings.get(&key) {
                Some(existing) if existing != destination => problems.push(format!(
                    "line {n}: identifier already mapped to another destination on line {}",
                    first_line[&key]
                )),
                Some(_) => {}
                None => {
                    first_line.insert(key.clone(), n);
                    mappings.insert(key, destination.to_owned());
                }
            }
        } else {
            problems.push(format!("line {n}: identifier must give a route key of 1..={MAX_KEY_LEN} bytes"));
        }
    }
    if problems.len() > MAX_REPORTED {
        let more = problems.len() - MAX_REPORTED;
        problems.truncate(MAX_REPORTED);
        problems.push(format!("... and {more} more malformed lines"));
    }
    if problems.is_empty() {
        Ok(mappings)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, MappingConfig, MappingSource, Normalize};
    use crate::store::Store;

    fn rule(normalize: Normalize) -> RouteKeyRule {
        RouteKeyRule { lowercase: normalize == Normalize::Lowercase, ..RouteKeyRule::default() }
    }

    async fn store_with(text: &str, normalize: Normalize) -> Result<Store, StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mappings.tsv");
        std::fs::write(&path, text).unwrap();
        let config = MappingConfig {
            source: MappingSource::File,
            normalize,
            file: Some(FileConfig { path }),
            ..MappingConfig::default()
        };
        Store::open(&config, &rule(normalize)).await
    }

    const GOOD: &str = "# accounts moved so far\n\nAlice@Example.test\tnew\r\n  bob@example.test \t legacy  \n#carol@example.test\tnew\nalice@example.test\tnew\n";

    #[tokio::test]
    async fn parses_comments_blank_lines_and_normalizes() {
        let store = store_with(GOOD, Normalize::Lowercase).await.unwrap();
        assert_eq!(store.get("alice@example.test").await.unwrap().as_deref(), Some("new"));
        assert_eq!(store.get("bob@example.test").await.unwrap().as_deref(), Some("legacy"));
        assert_eq!(store.get("carol@example.test").await.unwrap(), None);
        let all = store.list(None, 10).await.unwrap();
        assert_eq!(all.len(), 2);
        let page = store.list(Some("alice@example.test"), 10).await.unwrap();
        assert_eq!(page[0].key, "bob@example.test");
        assert_eq!(store.list(None, 1).await.unwrap()[0].key, "alice@example.test");

        let store = store_with(GOOD, Normalize::None).await.unwrap();
        assert_eq!(store.get("Alice@Example.test").await.unwrap().as_deref(), Some("new"));
        assert_eq!(store.list(None, 10).await.unwrap().len(), 3);
    }

    /// The file holds what operators write, as the API does: a master-user login is the
    /// account's line, and the key is the one a login computes.
    #[tokio::test]
    async fn keys_follow_the_route_key_rule() {
        let text = "Alice@Example.TEST%admin\tnew\nbob+list@example.test\tnew\n";
        let store = store_with(text, Normalize::Lowercase).await.unwrap();
        let rule = rule(Normalize::Lowercase);
        let login = |s: &str| rule.key(&Identifier::Login(s.into()));
        assert_eq!(store.get(&login("alice@example.test%admin")).await.unwrap().as_deref(), Some("new"));
        assert_eq!(store.get("alice@example.test").await.unwrap().as_deref(), Some("new"));
        // A login name keeps its `+` (only recipients are cut at the delimiter).
        assert_eq!(store.get("bob+list@example.test").await.unwrap().as_deref(), Some("new"));
        assert_eq!(store.list(None, 10).await.unwrap().len(), 2);
        // Two spellings of one account that disagree are caught like a duplicate.
        let err = store_with("alice%x\tnew\nALICE\tlegacy\n", Normalize::Lowercase).await.unwrap_err();
        assert!(err.to_string().contains("line 2: identifier already mapped"), "{err}");
    }

    #[tokio::test]
    async fn identifiers_without_a_usable_key_are_malformed_lines() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        let text = format!("%admin\tnew\n{long}\tnew\nok\tnew\n");
        let err = store_with(&text, Normalize::Lowercase).await.unwrap_err();
        let StoreError::Malformed { problems, .. } = &err else {
            panic!("{err}");
        };
        let bad = format!("identifier must give a route key of 1..={MAX_KEY_LEN} bytes");
        assert_eq!(problems, &[format!("line 1: {bad}"), format!("line 2: {bad}")]);
    }

    #[tokio::test]
    async fn is_read_only_with_an_empty_history() {
        let store = store_with(GOOD, Normalize::Lowercase).await.unwrap();
        assert!(!store.is_writable());
        assert!(matches!(store.put("a", "b").await, Err(StoreError::ReadOnly)));
        assert!(matches!(store.delete("alice@example.test").await, Err(StoreError::ReadOnly)));
        assert_eq!(store.revision().await.unwrap(), 0);
        assert_eq!(store.changes_since(0, 10).await.unwrap(), Some(vec![]));
        assert_eq!(store.changes_since(7, 10).await.unwrap(), None);
    }

    #[tokio::test]
    async fn epoch_follows_the_contents() {
        let a = store_with(GOOD, Normalize::Lowercase).await.unwrap();
        let b = store_with(GOOD, Normalize::Lowercase).await.unwrap();
        assert!(a.epoch().starts_with("file-"));
        // Different temp dirs: different paths, so different epochs.
        assert_ne!(a.epoch(), b.epoch());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tsv");
        std::fs::write(&path, GOOD).unwrap();
        let first = FileStore::open(&path, &rule(Normalize::Lowercase)).await.unwrap();
        let again = FileStore::open(&path, &rule(Normalize::Lowercase)).await.unwrap();
        assert_eq!(first.epoch(), again.epoch());
        std::fs::write(&path, "x\ty\n").unwrap();
        let edited = FileStore::open(&path, &rule(Normalize::Lowercase)).await.unwrap();
        assert_ne!(first.epoch(), edited.epoch());
        assert_eq!(edited.len(), 1);
    }

    #[tokio::test]
    async fn reports_every_malformed_line() {
        let text = "ok\tnew\nno-tab-here\n\tnew\nsomeone\t\nx\tnew extra\nOK\tlegacy\n# fine\n";
        let err = store_with(text, Normalize::Lowercase).await.unwrap_err();
        let StoreError::Malformed { problems, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            problems,
            &[
                "line 2: expected identifier<TAB>destination",
                "line 3: empty identifier",
                "line 4: empty destination",
                "line 5: destination contains whitespace",
                "line 6: identifier already mapped to another destination on line 1",
            ]
        );
        assert!(err.to_string().contains("mappings.tsv: malformed mapping file:\n  line 2:"));
    }

    #[test]
    fn caps_the_report_for_a_file_in_the_wrong_format() {
        let text = "a,b\n".repeat(60);
        let problems = parse(&text, &rule(Normalize::None)).unwrap_err();
        assert_eq!(problems.len(), MAX_REPORTED + 1);
        assert_eq!(problems[MAX_REPORTED], "... and 10 more malformed lines");
    }

    #[tokio::test]
    async fn a_missing_file_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileStore::open(&dir.path().join("absent.tsv"), &rule(Normalize::None)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }
}
