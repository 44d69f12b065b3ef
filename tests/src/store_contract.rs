//! What every writable mapping store must do, checked the same way for SQLite,
//! PostgreSQL and Redis: the control plane and its nodes rely on exactly this.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use controlplane::store::{Head, Mapping, Store, StoreError};

/// Runs the contract against `store`, which must be empty and writable.
pub async fn check(store: &Store) -> Result<()> {
    ensure!(store.is_writable(), "the contract needs a writable store");
    ensure!(store.revision().await? == 0, "the store must start empty (revision 0)");
    store.ping().await?;
    ensure!(!store.epoch().is_empty(), "a store names its history with an epoch");

    // Writes: every put and every effective delete bumps the revision by one.
    ensure!(store.get("alice@example.test").await?.is_none());
    let r1 = store.put("alice@example.test", "new").await?;
    let r2 = store.put("bob@example.test", "legacy").await?;
    let r3 = store.put("alice@example.test", "legacy").await?;
    ensure!(r1 >= 1 && r2 == r1 + 1 && r3 == r2 + 1, "revisions {r1}, {r2}, {r3} are not consecutive");
    ensure!(store.get("alice@example.test").await?.as_deref() == Some("legacy"), "the latest write wins");
    let r4 = store.delete("bob@example.test").await?;
    ensure!(r4 == Some(r3 + 1), "a delete of a mapped key is a change: {r4:?}");
    ensure!(store.delete("bob@example.test").await?.is_none(), "deleting an unmapped key changes nothing");
    ensure!(store.get("bob@example.test").await?.is_none());
    ensure!(store.revision().await? == r3 + 1, "the unmapped delete did not bump the revision");

    // History: oldest first, removals as `None`, limited, and nothing after the head.
    let changes = store.changes_since(0, 100).await?.unwrap_or_default();
    let seen: Vec<_> = changes.iter().map(|c| (c.revision, c.key.as_str(), c.destination.as_deref())).collect();
    let expected = vec![
        (r1, "alice@example.test", Some("new")),
        (r2, "bob@example.test", Some("legacy")),
        (r3, "alice@example.test", Some("legacy")),
        (r3 + 1, "bob@example.test", None),
    ];
    ensure!(seen == expected, "history {seen:?}, expected {expected:?}");
    let limited = store.changes_since(r1, 2).await?.unwrap_or_default();
    ensure!(limited.iter().map(|c| c.revision).collect::<Vec<_>>() == [r2, r3], "limit and start: {limited:?}");
    ensure!(store.changes_since(r3 + 1, 10).await? == Some(vec![]), "nothing after the head");
    ensure!(store.changes_since(r3 + 100, 10).await?.is_none(), "a revision ahead of the store cannot be replayed");

    // Keys are stored as given (callers normalize); odd but valid bytes survive.
    let odd = "o'brien+\"x\"\\tab\t@example.test";
    store.put(odd, "new").await?;
    ensure!(store.get(odd).await?.as_deref() == Some("new"), "quotes, backslashes and tabs in a key");
    store.delete(odd).await?;

    // Listing: byte order of keys, keyset paging without gaps or repeats.
    let keys: Vec<String> = (0..25).map(|i| format!("user{i:02}@example.test")).collect();
    for key in &keys {
        store.put(key, if key.ends_with("7@example.test") { "legacy" } else { "new" }).await?;
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), 7).await?;
        ensure!(page.len() <= 7, "a page holds at most the limit");
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        listed.extend(page);
    }
    let mut expected: Vec<Mapping> = keys
        .iter()
        .map(|k| Mapping {
            key: k.clone(),
            destination: if k.ends_with("7@example.test") { "legacy" } else { "new" }.into(),
        })
        .collect();
    expected.insert(0, Mapping { key: "alice@example.test".into(), destination: "legacy".into() });
    ensure!(listed == expected, "paged listing differs:\n{listed:?}\nexpected\n{expected:?}");

    // Bulk import: every row written, one change in the history, marked bulk.
    let before = store.revision().await?;
    let rows: Vec<Mapping> = (0..5000)
        .map(|i| Mapping { key: format!("bulk{i:05}@example.test"), destination: "new".into() })
        .chain([Mapping { key: "alice@example.test".into(), destination: "new".into() }])
        .collect();
    let reported = std::sync::atomic::AtomicU64::new(0);
    let revision = store
        .import(&rows, &|n| {
            reported.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await?;
    ensure!(revision == before + 1, "an import is one change: {before} → {revision}");
    ensure!(store.revision().await? == revision);
    ensure!(
        reported.load(std::sync::atomic::Ordering::Relaxed) == rows.len() as u64,
        "progress ends at the number of rows, got {}",
        reported.load(std::sync::atomic::Ordering::Relaxed)
    );
    let bulk = store.changes_since(before, 10).await?.unwrap_or_default();
    ensure!(bulk.len() == 1 && bulk[0].is_bulk() && bulk[0].revision == revision, "one bulk change: {bulk:?}");
    ensure!(store.get("alice@example.test").await?.as_deref() == Some("new"), "an import overwrites");
    ensure!(store.get("bulk04999@example.test").await?.as_deref() == Some("new"));
    let mut all = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        all.extend(page.into_iter().map(|m| m.key));
    }
    ensure!(all.len() == 1 + 25 + 5000, "{} mappings listed after the import", all.len());

    // Writes after an import continue the same sequence.
    let next = store.put("carol@example.test", "new").await?;
    ensure!(next == revision + 1, "after the import: {next}");
    check_epoch(store, next).await
}

/// The epoch as the store holds it: read with the revision, renewed by compare-and-set,
/// and checked by every write.
async fn check_epoch(store: &Store, revision: u64) -> Result<()> {
    let old = store.epoch();
    let head = store.head().await?;
    ensure!(head == Head { epoch: Some(old.to_string()), revision }, "head {head:?}");
    let new = store.renew_epoch(&old).await?;
    ensure!(new != old && store.epoch() == new, "renewing {old} gave {new}");
    ensure!(store.head().await?.epoch.as_deref() == Some(&*new), "the new epoch is in the store");
    // A replica still on the old epoch adopts the one the store holds, instead of a third.
    ensure!(store.renew_epoch(&old).await? == new, "a renewal from a stale epoch adopts the stored one");
    let next = store.put("dave@example.test", "new").await?;
    ensure!(next == revision + 1, "the revision goes on under the new epoch: {next}");
    Ok(())
}

/// Two replicas sharing a store (`store` and `other`, two handles on one store, on the
/// same epoch): renewing at once from the same epoch, both end on one new epoch; once one
/// renewed again, every kind of write through the other is refused and nothing is written.
pub async fn check_writes_refused_on_another_epoch(store: &Store, other: &Store) -> Result<()> {
    let old = store.epoch();
    ensure!(other.epoch() == old, "two handles on one store share its epoch");
    let (a, b) = tokio::join!(store.renew_epoch(&old), other.renew_epoch(&old));
    let (a, b) = (a?, b?);
    ensure!(a == b && a != old, "replicas renewing together disagree: {a} and {b}");
    let revision = store.put("erin@example.test", "new").await?;
    other.renew_epoch(&other.epoch()).await?;
    let refused = |r: Result<(), StoreError>| matches!(r, Err(StoreError::EpochChanged { found: Some(_), .. }));
    let put = store.put("erin@example.test", "legacy").await;
    ensure!(refused(put.map(drop)), "put was not refused");
    let delete = store.delete("erin@example.test").await;
    ensure!(refused(delete.map(drop)), "delete was not refused");
    let rows = [Mapping { key: "frank@example.test".into(), destination: "new".into() }];
    let import = store.import(&rows, &|_| {}).await;
    ensure!(refused(import.map(drop)), "import was not refused");
    ensure!(store.revision().await? == revision, "nothing was written");
    ensure!(store.get("erin@example.test").await?.as_deref() == Some("new"));
    ensure!(store.get("frank@example.test").await?.is_none());
    Ok(())
}
