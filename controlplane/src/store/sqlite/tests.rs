use super::*;

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("nested/dir/mappings.db")).await.unwrap()
}

#[tokio::test]
async fn put_get_delete_with_monotonic_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.revision().await.unwrap(), 0);
    assert_eq!(store.get("alice").await.unwrap(), None);
    assert_eq!(store.put("alice", "new").await.unwrap(), 1);
    assert_eq!(store.put("bob", "legacy").await.unwrap(), 2);
    // Rewriting the same value is still a write: it bumps the revision.
    assert_eq!(store.put("alice", "new").await.unwrap(), 3);
    assert_eq!(store.put("alice", "legacy").await.unwrap(), 4);
    assert_eq!(store.get("alice").await.unwrap().as_deref(), Some("legacy"));
    assert_eq!(store.delete("alice").await.unwrap(), Some(5));
    assert_eq!(store.delete("alice").await.unwrap(), None);
    assert_eq!(store.get("alice").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), 5);
    // Keys are stored as given; normalizing is the caller's job.
    store.put("Carol", "new").await.unwrap();
    assert_eq!(store.get("carol").await.unwrap(), None);
}

#[tokio::test]
async fn list_pages_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for key in ["d", "a", "c", "e", "b"] {
        store.put(key, &format!("dest-{key}")).await.unwrap();
    }
    let page = store.list(None, 2).await.unwrap();
    let keys: Vec<&str> = page.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(page[1].destination, "dest-b");
    let page = store.list(Some("b"), 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["c", "d"]);
    let page = store.list(Some("d"), 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["e"]);
    assert!(store.list(Some("e"), 2).await.unwrap().is_empty());
    assert!(store.list(None, 0).await.unwrap().is_empty());
    assert_eq!(store.list(None, usize::MAX).await.unwrap().len(), 5);
}

#[tokio::test]
async fn changes_since_replays_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.changes_since(0, 10).await.unwrap(), Some(vec![]));
    store.put("a", "x").await.unwrap();
    store.put("b", "y").await.unwrap();
    store.delete("a").await.unwrap();
    let change = |revision, key: &str, destination: Option<&str>| Change {
        revision,
        key: key.into(),
        destination: destination.map(Into::into),
    };
    assert_eq!(
        store.changes_since(0, 10).await.unwrap().unwrap(),
        [change(1, "a", Some("x")), change(2, "b", Some("y")), change(3, "a", None)]
    );
    assert_eq!(store.changes_since(1, 1).await.unwrap().unwrap(), [change(2, "b", Some("y"))]);
    assert_eq!(store.changes_since(3, 10).await.unwrap(), Some(vec![]));
    // A node ahead of the store follows another history: it must flush.
    assert_eq!(store.changes_since(4, 10).await.unwrap(), None);
    // Once the log is trimmed past a node's revision, it must flush too.
    sqlx::query("DELETE FROM changes WHERE revision <= 2").execute(&store.pool).await.unwrap();
    assert_eq!(store.changes_since(1, 10).await.unwrap(), None);
    assert_eq!(store.changes_since(2, 10).await.unwrap().unwrap().len(), 1);
    assert_eq!(store.revision().await.unwrap(), 3);
}

#[tokio::test]
async fn reopening_keeps_epoch_mappings_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.put("a", "x").await.unwrap();
    store.put("b", "y").await.unwrap();
    store.delete("b").await.unwrap();
    let epoch = store.epoch().to_owned();
    assert!(!epoch.is_empty());
    store.close().await;

    let store = open(&dir).await;
    assert_eq!(store.epoch(), epoch);
    assert_eq!(store.revision().await.unwrap(), 3);
    assert_eq!(store.get("a").await.unwrap().as_deref(), Some("x"));
    assert_eq!(store.put("c", "z").await.unwrap(), 4);
    assert_eq!(store.changes_since(2, 10).await.unwrap().unwrap().len(), 2);

    let other = tempfile::tempdir().unwrap();
    assert_ne!(open(&other).await.epoch(), epoch);
}

#[tokio::test]
async fn concurrent_writers_get_distinct_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let writes = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.put(&format!("k{i}"), "d").await.unwrap() })
    });
    let mut revisions = Vec::new();
    for w in writes {
        revisions.push(w.await.unwrap());
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test]
async fn an_unusable_path_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let err = SqliteStore::open(&blocker.join("mappings.db")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

/// Replicas started together on one fresh database file: every one of them opens it (the
/// switch to WAL and the schema set-up take locks the others must wait for) and they all
/// see one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_opening_one_fresh_file_together_all_open_it() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let opens = (0..6).map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        });
        let mut epochs = Vec::new();
        for open in futures::future::join_all(opens).await {
            match open.unwrap() {
                Ok(store) => epochs.push(store.epoch().to_string()),
                Err(e) => panic!("round {round}: a replica could not open the shared file: {e}"),
            }
        }
        epochs.dedup();
        assert_eq!(epochs.len(), 1, "round {round}: one epoch for every replica: {epochs:?}");
    }
}
