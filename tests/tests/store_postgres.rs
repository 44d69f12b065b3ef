//! The PostgreSQL store against a real PostgreSQL server: the shared store contract, two
//! control-plane replicas on one database (one gapless history in commit order, change
//! notifications across replicas), a control-plane restart, a server outage and its end,
//! replicas migrating a fresh database at the same moment, and bulk imports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use controlplane::config::{MappingConfig, MappingSource, PostgresConfig};
use controlplane::store::{Change, Mapping, PostgresStore, Store, StoreError};
use switchyard_tests::postgres::{require_or_skip, Postgres};
use switchyard_tests::{eventually, store_contract, woken};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Short, so that the outage test proves errors arrive within it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a notification may take to wake a watcher.
const WAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn config(url: &str) -> PostgresConfig {
    PostgresConfig { url: Some(url.into()), connect_timeout: CONNECT_TIMEOUT, ..PostgresConfig::default() }
}

async fn open(url: &str) -> Result<PostgresStore> {
    Ok(PostgresStore::open(&config(url)).await?)
}

fn keys(mappings: &[Mapping]) -> Vec<&str> {
    mappings.iter().map(|m| m.key.as_str()).collect()
}

#[tokio::test]
async fn postgres_keeps_the_store_contract_in_byte_order_whatever_the_collation() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    // en-US sorts "a" before "B": listing must still follow byte order, like the other stores.
    let url = pg.fresh_database_icu("contract", "en-US")?;
    let mapping = MappingConfig { source: MappingSource::Postgres, postgres: Some(config(&url)), ..Default::default() };
    let store = Store::open(&mapping, &dataplane::routekey::RouteKeyRule::default()).await?;
    store_contract::check(&store).await?;

    for key in ["b", "B", "_x", "Z", "a"] {
        store.put(&format!("~{key}"), "new").await?;
    }
    let first = store.list(Some("~"), 2).await?;
    let rest = store.list(Some(&first[1].key), 10).await?;
    ensure!(keys(&first) == ["~B", "~Z"] && keys(&rest) == ["~_x", "~a", "~b"], "{first:?} then {rest:?}");

    // A change log trimmed past a node's revision cannot be replayed: the node must flush.
    let head = store.revision().await?;
    pg.psql("contract", "DELETE FROM changes WHERE revision <= 2")?;
    ensure!(store.changes_since(1, 10).await?.is_none(), "revision 2 is gone from the log");
    ensure!(store.changes_since(2, 1).await?.is_some_and(|c| c.len() == 1 && c[0].revision == 3));
    ensure!(store.revision().await? == head, "trimming old changes keeps the head");
    store_contract::check_writes_refused_on_another_epoch(
        &store,
        &Store::open(&mapping, &dataplane::routekey::RouteKeyRule::default()).await?,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_write_one_gapless_history_in_commit_order() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("replicas")?;
    // 400 writers queue for 8 connections per replica, behind one write lock: give them
    // time to get a connection.
    let patient = PostgresConfig { connect_timeout: Duration::from_secs(30), ..config(&url) };
    let (a, b) = (PostgresStore::open(&patient).await?, PostgresStore::open(&patient).await?);
    ensure!(a.epoch() == b.epoch(), "replicas of one database share its epoch");

    // A reader follows the log through replica B while both replicas write: it must see
    // every revision, in order, without ever skipping one that commits late.
    const WRITES: u64 = 400;
    let reader = tokio::spawn({
        let b = b.clone();
        async move {
            let mut seen: Vec<Change> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while (seen.len() as u64) < WRITES {
                ensure!(Instant::now() < deadline, "the reader saw only {} changes", seen.len());
                let last = seen.last().map_or(0, |c| c.revision);
                let batch = b.changes_since(last, 37).await?.context("the log reaches back to 0")?;
                for (i, change) in batch.iter().enumerate() {
                    ensure!(change.revision == last + 1 + i as u64, "after {last} came {batch:?}");
                }
                seen.extend(batch);
                tokio::task::yield_now().await;
            }
            Ok(seen)
        }
    });

    let written = Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..WRITES)
        .map(|i| {
            let (store, replica) = if i % 2 == 0 { (a.clone(), "a") } else { (b.clone(), "b") };
            let written = Arc::clone(&written);
            tokio::spawn(async move {
                let (key, destination) = (format!("user{}@example.test", i % 50), format!("{replica}-{i}"));
                let revision = store.put(&key, &destination).await?;
                let previous = written.lock().unwrap().insert(revision, (key, destination));
                ensure!(previous.is_none(), "revision {revision} handed out twice");
                anyhow::Ok(())
            })
        })
        .collect();
    let started = Instant::now();
    for writer in writers {
        writer.await??;
    }
    println!("{WRITES} concurrent puts through two replicas: {:?}", started.elapsed());
    let written = std::mem::take(&mut *written.lock().unwrap());
    ensure!(written.keys().copied().eq(1..=WRITES), "revisions are exactly 1..={WRITES}");

    let followed = reader.await??;
    let from_a = a.changes_since(0, 1000).await?.context("history from a")?;
    let from_b = b.changes_since(0, 1000).await?.context("history from b")?;
    ensure!(followed == from_a && from_a == from_b, "every reader sees the same history");
    for change in &from_a {
        let (key, destination) = &written[&change.revision];
        ensure!(&change.key == key && change.destination.as_ref() == Some(destination), "{change:?}");
    }
    // The table agrees with the log: each key holds its latest write.
    for i in 0..50 {
        let key = format!("user{i}@example.test");
        let latest = from_a.iter().rev().find(|c| c.key == key).and_then(|c| c.destination.clone());
        ensure!(a.get(&key).await? == latest, "{key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_wakes_the_other_replicas_watcher() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("watch")?;
    let (a, b) = (open(&url).await?, open(&url).await?);
    let wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    b.watch(Arc::clone(&wake), shutdown.clone());
    woken(&wake, WAKE_TIMEOUT, "the watcher wakes once it listens").await?;
    ensure!(
        tokio::time::timeout(Duration::from_millis(300), wake.notified()).await.is_err(),
        "no wake-up without a write"
    );
    let revision = a.put("alice@example.test", "new").await?;
    woken(&wake, WAKE_TIMEOUT, "a put through replica a").await?;
    ensure!(b.changes_since(revision - 1, 10).await?.is_some_and(|c| c.len() == 1));
    a.delete("alice@example.test").await?;
    woken(&wake, WAKE_TIMEOUT, "a delete through replica a").await?;
    a.import(&[Mapping { key: "bob@example.test".into(), destination: "legacy".into() }], &|_| {}).await?;
    woken(&wake, WAKE_TIMEOUT, "an import through replica a").await?;
    shutdown.cancel();
    Ok(())
}

#[tokio::test]
async fn reopening_keeps_the_epoch_and_continues_the_revisions() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("reopen")?;
    let store = open(&url).await?;
    store.put("a", "x").await?;
    store.put("b", "y").await?;
    store.delete("b").await?;
    let epoch = store.epoch().to_string();
    store.close().await;

    let store = open(&url).await?;
    ensure!(*store.epoch() == *epoch, "the epoch survives a restart");
    ensure!(store.revision().await? == 3);
    ensure!(store.get("a").await?.as_deref() == Some("x"));
    ensure!(store.put("c", "z").await? == 4, "revisions continue after a restart");
    ensure!(store.changes_since(0, 10).await?.is_some_and(|c| c.len() == 4));
    let other = open(&pg.fresh_database("other")?).await?;
    ensure!(*other.epoch() != *epoch, "another database is another history");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_at_once_and_the_store_recovers_after_it_restarts() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let mut pg = Postgres::start()?;
    let url = pg.fresh_database("outage")?;
    let store = open(&url).await?;
    store.put("alice@example.test", "new").await?;
    let wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    store.watch(Arc::clone(&wake), shutdown.clone());
    woken(&wake, WAKE_TIMEOUT, "the watcher listens").await?;

    pg.stop()?;
    let target = format!("PostgreSQL 127.0.0.1:{}/outage", pg.port());
    let bulk = [Mapping { key: "bob@example.test".into(), destination: "legacy".into() }];
    for op in ["get", "put", "delete", "list", "revision", "changes_since", "import"] {
        let started = Instant::now();
        let result = match op {
            "get" => store.get("alice@example.test").await.map(drop),
            "put" => store.put("alice@example.test", "legacy").await.map(drop),
            "delete" => store.delete("alice@example.test").await.map(drop),
            "list" => store.list(None, 10).await.map(drop),
            "revision" => store.revision().await.map(drop),
            "changes_since" => store.changes_since(0, 10).await.map(drop),
            _ => store.import(&bulk, &|_| {}).await.map(drop),
        };
        let elapsed = started.elapsed();
        match result {
            Err(StoreError::Unavailable(message)) => ensure!(message.contains(&target), "{op}: {message}"),
            other => anyhow::bail!("{op} with the server stopped: {other:?}"),
        }
        ensure!(elapsed < CONNECT_TIMEOUT + Duration::from_secs(1), "{op} took {elapsed:?}");
    }
    ensure!(PostgresStore::open(&config(&url)).await.is_err(), "opening needs the server");

    pg.restart()?;
    eventually(Duration::from_secs(10), || async {
        ensure!(store.get("alice@example.test").await?.as_deref() == Some("new"));
        Ok(())
    })
    .await?;
    ensure!(store.put("alice@example.test", "legacy").await? == 2, "nothing was written during the outage");
    // Notifications sent while the listener was away are lost: it wakes the feed once it
    // listens again, so the feed catches up from the log.
    woken(&wake, Duration::from_secs(15), "the watcher reconnects").await?;
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_opening_a_fresh_database_together_all_succeed() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    for round in 0..3 {
        let name = format!("race{round}");
        let url = pg.fresh_database(&name)?;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { open(&url).await })
            })
            .collect();
        let mut epochs = Vec::new();
        for open in opens {
            epochs.push(open.await??.epoch().to_string());
        }
        ensure!(epochs.iter().all(|e| *e == epochs[0]), "one epoch per database: {epochs:?}");
        ensure!(pg.psql(&name, "SELECT count(*) FROM _sqlx_migrations WHERE success")? == "1");
    }
    Ok(())
}

#[tokio::test]
async fn an_import_keeps_odd_bytes_lets_the_last_duplicate_win_and_skips_unchanged_rows() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start()?;
    let url = pg.fresh_database("import")?;
    let store = open(&url).await?;
    let odd = ["tab\there", "back\\slash", "new\nline", "carriage\rreturn", "\\.", "ünïcødé", "o'brien\"q\""];
    let mut rows: Vec<Mapping> = (0..25_000)
        .map(|i| Mapping { key: format!("user{i:05}@example.test"), destination: "new".into() })
        .chain(odd.iter().map(|k| Mapping { key: k.to_string(), destination: format!("dest\t{k}") }))
        .collect();
    rows.push(Mapping { key: "user00007@example.test".into(), destination: "legacy".into() });
    let reports = Mutex::new(Vec::new());
    let revision = store.import(&rows, &|n| reports.lock().unwrap().push(n)).await?;
    ensure!(*reports.lock().unwrap() == [10_000, 20_000, 25_008], "{:?}", reports.lock().unwrap());
    ensure!(revision == 1);
    for key in odd {
        ensure!(store.get(key).await? == Some(format!("dest\t{key}")), "{key:?}");
    }
    ensure!(store.get("user00007@example.test").await?.as_deref() == Some("legacy"), "the last row wins");
    ensure!(pg.psql("import", "SELECT count(*) FROM mappings")? == "25007");

    // Re-importing the same rows is one more change but rewrites nothing.
    rows[3].destination = "legacy".into();
    let second = store.import(&rows, &|_| {}).await?;
    ensure!(second == 2 && store.changes_since(1, 10).await?.is_some_and(|c| c.len() == 1 && c[0].is_bulk()));
    let stamped = pg.psql("import", "SELECT updated_revision, count(*) FROM mappings GROUP BY 1 ORDER BY 1")?;
    ensure!(stamped == "1|25006\n2|1", "only the changed row carries the new revision: {stamped}");
    ensure!(store.import(&[], &|_| {}).await? == 2, "an empty import changes nothing");
    Ok(())
}

/// The figure the README quotes. Durable commits (`fsync = on`), keys in random order.
#[tokio::test]
#[ignore = "measurement: cargo test --release -p switchyard-tests --test store_postgres -- --ignored --nocapture"]
async fn import_a_million_mappings_in_under_a_minute() -> Result<()> {
    if !require_or_skip() {
        return Ok(());
    }
    let pg = Postgres::start_with(&[("fsync", "on")])?;
    let url = pg.fresh_database("million")?;
    let store = open(&url).await?;
    let mut rows: Vec<Mapping> = (0..1_000_000)
        .map(|i| Mapping {
            key: format!("user{i:07}@example.test"),
            destination: ["new", "legacy", "archive"][i % 3].into(),
        })
        .collect();
    fastrand::shuffle(&mut rows);
    for round in ["into an empty store", "the same rows again", "every row changed"] {
        if round == "every row changed" {
            rows.iter_mut().for_each(|m| m.destination.push_str("-2"));
        }
        let started = Instant::now();
        store.import(&rows, &|_| {}).await?;
        let elapsed = started.elapsed();
        println!("postgres import of {} mappings, {round}: {:.2} s", rows.len(), elapsed.as_secs_f64());
        ensure!(elapsed < Duration::from_secs(60), "{round}: {elapsed:?}");
    }
    ensure!(pg.psql("million", "SELECT count(*) FROM mappings WHERE destination LIKE '%-2'")? == "1000000");
    Ok(())
}
