//! No log line names an account: a whole fleet scenario on the real binaries (IMAP, POP3
//! and LMTP through a node to a real Dovecot, failed logins, every admin action on an
//! account, a control-plane peer that is down) and then every line at info and above of
//! both processes is searched for every account used, in any case and percent-encoded.

use anyhow::{ensure, Result};
use serde_json::json;
use switchyard_tests::binfleet::BinFleet;
use switchyard_tests::fleet::{destination_toml, listener_toml};
use switchyard_tests::{free_port, python_lmtp_send, python_pop3, require_or_skip, status, ClientTls};
use switchyard_tests::{Dovecot, ImapClient};

const USERS: &[(&str, &str)] = &[("alice@example.test", "pw"), ("bob@example.test", "pw")];
/// The local parts of every account the scenario names; `carol` has no mailbox.
const LOCAL_PARTS: &[&str] = &["alice", "bob", "carol"];

/// The level field of a log line (`<timestamp> <LEVEL> ...`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_at_info_or_above_names_an_account_even_with_a_peer_down() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dovecot = Dovecot::start(USERS)?;
    let endpoints = [("imap", dovecot.imap_port()), ("pop3", dovecot.pop3_port()), ("lmtp", dovecot.lmtp_port())];
    let destinations = destination_toml("legacy", &endpoints, "") + &destination_toml("new", &endpoints, "");
    // Nothing listens there: every fleet-wide call finds this peer down.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("[cluster]\npeers = [\"{peer}\"]\npeer_timeout = \"1s\"\n");
    let listeners =
        listener_toml("imap", "imap", "") + &listener_toml("pop3", "pop3", "") + &listener_toml("lmtp", "lmtp", "");
    let fleet = BinFleet::start(&destinations, "legacy", |cp| cp + &cluster, &listeners).await?;
    let api = &fleet.api;

    let (code, body) = api.put("/mappings/Alice@Example.test", json!({"destination": "legacy"})).await?;
    ensure!(code == 200, "PUT: {code} {body}");
    let (code, body) = api.get("/mappings/alice%40example.test").await?;
    ensure!(code == 200 && body["destination"] == "legacy", "GET: {code} {body}");

    let mut imap = ImapClient::connect(fleet.addr("imap")?).await?;
    ensure!(status(&imap.login("alice@example.test", "pw").await?) == "OK");
    imap.logout().await?;
    let mut imap = ImapClient::connect(fleet.addr("imap")?).await?;
    ensure!(status(&imap.login("carol@example.test", "wrong").await?) == "NO");
    let (ok, out) = python_pop3(fleet.addr("pop3")?.port(), "bob@example.test", "pw", &ClientTls::Plain).await?;
    ensure!(ok, "POP3 login: {out}");
    let recipients = ["alice@example.test", "bob+tag@example.test", "carol@example.test"];
    let (_, out) = python_lmtp_send(fleet.addr("lmtp")?.port(), "sender@example.org", &recipients, "hi").await?;
    ensure!(out.contains("DATA alice@example.test 250"), "LMTP: {out}");

    for path in [
        "/connections/kick?identifier=alice%40example.test",
        "/connections/delay?identifier=Bob%40example.test&seconds=1",
        "/cache/invalidate?identifier=carol%40example.test",
    ] {
        let (code, body) = api.post(path).await?;
        ensure!(code == 200, "{path}: {code} {body}");
    }
    let (code, body) = api.post_json("/mappings/alice@example.test/move", json!({"destination": "new"})).await?;
    ensure!(code == 200, "move: {code} {body}");
    let (code, body) = api.delete("/mappings/alice@example.test").await?;
    ensure!(code == 200, "DELETE: {code} {body}");

    fleet.cp.wait_for(&["WARN", "control-plane peer did not answer"]).await?;
    fleet.node.wait_for(&["session closed", "protocol=lmtp"]).await?;
    fleet.node.wait_for(&["session closed", "protocol=pop3"]).await?;
    fleet.cp.wait_for(&["admin: mapping removed"]).await?;

    let lines: Vec<String> = fleet.cp.lines().into_iter().chain(fleet.node.lines()).collect();
    let mut leaks = Vec::new();
    for line in lines.iter().filter(|l| matches!(level(l), "INFO" | "WARN" | "ERROR")) {
        let lower = line.to_lowercase();
        if LOCAL_PARTS.iter().any(|local| lower.contains(local)) {
            leaks.push(line.as_str());
        }
    }
    ensure!(leaks.is_empty(), "account identifiers in the log:\n{}", leaks.join("\n"));
    ensure!(lines.iter().any(|l| l.contains("account=al…#")), "no redacted account tag logged:\n{}", fleet.logs());
    Ok(())
}
