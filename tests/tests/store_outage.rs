//! The mapping store going away under a running fleet (real PostgreSQL, real Dovecot):
//! the control plane says so on `/readyz` and answers writes with 503 and a clear message;
//! nodes keep routing cached accounts and give an uncached one a temporary failure, never
//! the default destination; when the database returns everything works again by itself.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use switchyard_tests::fleet::{controlplane_toml_store, destination_toml, ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::postgres::Postgres;
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};

const USERS: &[(&str, &str)] =
    &[("alice@example.test", "pw"), ("bob@example.test", "pw"), ("carol@example.test", "pw")];
const WAIT: Duration = Duration::from_secs(30);

/// The tagged answer to a login and, when it succeeded, the subjects in the inbox.
async fn login(node: &Node, user: &str) -> Result<(String, Vec<String>)> {
    let mut imap = ImapClient::connect(node.imap).await?;
    let tagged = imap.login(user, "pw").await?;
    if status(&tagged) != "OK" {
        return Ok((tagged, Vec::new()));
    }
    let subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    Ok((tagged, subjects))
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
    let destinations = destination_toml("legacy", &[("imap", legacy.imap_port())], "")
        + &destination_toml("new", &[("imap", new.imap_port())], "");
    let cp = ControlPlane::start_config(controlplane_toml_store(&mapping, &destinations, "legacy")).await?;
    let api = cp.api();
    let node = Node::start("dp-1", &[cp.endpoint()], Some(NODE_TOKEN)).await?;
    eventually(WAIT, || async {
        let (code, body) = node.readyz().await?;
        ensure!(code == 200 && body["status"] == "ready", "{code} {body}");
        Ok(())
    })
    .await?;

    let (code, body) = api.put("/mappings/alice@example.test", json!({"destination": "new"})).await?;
    ensure!(code == 200, "{code} {body}");
    let (tagged, subjects) = login(&node, "alice@example.test").await?;
    ensure!(subjects == ["on new"], "alice before the outage: {tagged} {subjects:?}");
    ensure!(api.get("/readyz").await?.0 == 200);

    pg.stop()?;
    eventually(WAIT, || async {
        let (code, body) = api.get("/readyz").await?;
        ensure!(code == 503, "/readyz with the database stopped: {code} {body}");
        Ok(())
    })
    .await?;
    let (code, body) = api.put("/mappings/bob@example.test", json!({"destination": "new"})).await?;
    let message = body["error"].as_str().unwrap_or_default();
    ensure!(code == 503 && message.contains("mapping store unavailable"), "a write without the store: {code} {body}");
    // Cached: still routed where the store said. Uncached: a temporary failure, not legacy.
    let (tagged, subjects) = login(&node, "alice@example.test").await?;
    ensure!(subjects == ["on new"], "alice during the outage: {tagged} {subjects:?}");
    let (tagged, subjects) = login(&node, "carol@example.test").await?;
    ensure!(tagged.contains("NO [UNAVAILABLE]") && subjects.is_empty(), "carol during the outage: {tagged}");

    pg.restart()?;
    eventually(WAIT, || async {
        let (code, body) = api.get("/readyz").await?;
        ensure!(code == 200, "/readyz after the database came back: {code} {body}");
        Ok(())
    })
    .await?;
    let (code, body) = api.put("/mappings/bob@example.test", json!({"destination": "new"})).await?;
    ensure!(code == 200 && body["nodes"][0]["result"] == "applied", "a write after the outage: {code} {body}");
    let (tagged, subjects) = login(&node, "bob@example.test").await?;
    ensure!(subjects == ["on new"], "bob after the outage: {tagged} {subjects:?}");
    let (tagged, subjects) = login(&node, "carol@example.test").await?;
    ensure!(subjects == ["on legacy"], "carol (unmapped) after the outage: {tagged} {subjects:?}");
    Ok(())
}
