//! The embedded SQLite store against the shared store contract, and across a reopen.

use anyhow::{ensure, Result};
use controlplane::config::MappingConfig;
use controlplane::store::Store;

fn config(path: &std::path::Path) -> MappingConfig {
    let mut config = MappingConfig::default();
    config.sqlite.path = path.to_path_buf();
    config
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract_and_its_history_across_a_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested/mappings.db");
    let store = Store::open(&config(&path), &dataplane::routekey::RouteKeyRule::default()).await?;
    switchyard_tests::store_contract::check(&store).await?;
    let (epoch, revision) = (store.epoch().to_string(), store.revision().await?);
    drop(store);
    let reopened = Store::open(&config(&path), &dataplane::routekey::RouteKeyRule::default()).await?;
    ensure!(*reopened.epoch() == *epoch, "the epoch survives a restart");
    ensure!(reopened.revision().await? == revision, "so does the revision");
    let next = reopened.put("dave@example.test", "new").await?;
    ensure!(next == revision + 1, "revisions continue after a restart: {next}");
    let other = Store::open(&config(&path), &dataplane::routekey::RouteKeyRule::default()).await?;
    switchyard_tests::store_contract::check_writes_refused_on_another_epoch(&reopened, &other).await?;
    Ok(())
}
