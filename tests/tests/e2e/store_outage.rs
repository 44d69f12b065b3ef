//! The mapping store going away under a running fleet (real PostgreSQL, real Dovecot):
//! the control plane says so on `/readyz` (why, only to a holder of the admin token) and
//! answers writes with 503 and a clear message; nodes keep routing cached accounts and give an uncached one a temporary failure, never
//! the default destination; when the database returns everything works again by itself.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use switchyard_tests::config::MappingStore;
use switchyard_tests::fleet::{Fleet, Node};
use switchyard_tests::postgres::Postgres;
use switchyard_tests::{eventually, require_or_skip, Dovecot};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "pw"), ("bob@example.test", "pw"), ("carol@example.test", "pw")];
const WAIT: Duration = Duration::from_secs(30);

/// The subjects in the inbox, or the tagged answer of a refused login.
async fn login(node: &Node, user: &str) -> Result<Result<Vec<String>, String>> {
    switchyard_tests::inbox_subjects(node.imap, user, "pw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_temporary_failure_and_heals_by_itself() -> Result<()> {
    if !(require_or_skip("dovecot") && switchyard_tests::postgres::require_or_skip()) {
        return Ok(());
    }
    let legacy = Dovecot::start(USERS)?;
    let new = Dovecot::start(USERS)?;
    for (user, _) in USERS {
        legacy.deliver(user, "on legacy")?;
        new.deliver(user, "on new")?;
    }
    let mut pg = Postgres::start()?;
    let url = pg.fresh_database("outage")?;
    let mapping = format!(
        "[mapping]\nsource = \"postgres\"\npoll_interval = \"200ms\"\n[mapping.postgres]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n"
    );
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["imap"])
        .dovecot("new", &new, &["imap"])
        .store(MappingStore::Tables(mapping))
        .map("alice@example.test", "new")
        .start()
        .await?;
    let (cp, node, api) = (&fleet.cp, fleet.node(), fleet.api());
    let alice = login(node, "alice@example.test").await?;
    ensure!(alice == Ok(vec!["on new".into()]), "alice before the outage: {alice:?}");
    ensure!(api.get("/readyz").await?.0 == 200);

    pg.stop()?;
    eventually(WAIT, || async {
        let (code, body) = api.get("/readyz").await?;
        ensure!(code == 503, "/readyz with the database stopped: {code} {body}");
        Ok(())
    })
    .await?;
    // Without the admin token (or with a wrong one) nothing about the store is told.
    let mut anonymous = cp.api().without_token();
    let (code, body) = anonymous.get("/readyz").await?;
    ensure!(code == 503 && body == "not ready", "/readyz without a token: {code} {body}");
    anonymous.token = Some("not-the-admin-token-0123456789abcdef".into());
    let (code, body) = anonymous.get("/readyz").await?;
    ensure!(code == 503 && body == "not ready", "/readyz with a wrong token: {code} {body}");
    let (_, detail) = api.get("/readyz").await?;
    let detail = detail.as_str().unwrap_or_default();
    ensure!(detail.starts_with("not ready: ") && detail.len() > 20, "/readyz with the token has the cause: {detail:?}");
    let (code, body) = api.put("/mappings/bob@example.test", json!({"destination": "new"})).await?;
    let message = body["error"].as_str().unwrap_or_default();
    ensure!(code == 503 && message.contains("mapping store unavailable"), "a write without the store: {code} {body}");
    // Cached: still routed where the store said. Uncached: a temporary failure, not legacy.
    let alice = login(node, "alice@example.test").await?;
    ensure!(alice == Ok(vec!["on new".into()]), "alice during the outage: {alice:?}");
    let carol = login(node, "carol@example.test").await?;
    ensure!(carol.as_ref().is_err_and(|t| t.contains("NO [UNAVAILABLE]")), "carol during the outage: {carol:?}");

    pg.restart()?;
    eventually(WAIT, || async {
        let (code, body) = api.get("/readyz").await?;
        ensure!(code == 200, "/readyz after the database came back: {code} {body}");
        Ok(())
    })
    .await?;
    let (code, body) = api.put("/mappings/bob@example.test", json!({"destination": "new"})).await?;
    ensure!(code == 200 && body["nodes"][0]["result"] == "applied", "a write after the outage: {code} {body}");
    let bob = login(node, "bob@example.test").await?;
    ensure!(bob == Ok(vec!["on new".into()]), "bob after the outage: {bob:?}");
    let carol = login(node, "carol@example.test").await?;
    ensure!(carol == Ok(vec!["on legacy".into()]), "carol (unmapped) after the outage: {carol:?}");
    Ok(())
}
