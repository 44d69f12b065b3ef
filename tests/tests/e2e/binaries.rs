//! The real binaries: `--check`, start-up on port 0, and the log lines the observability
//! seed promises (binds, per-connection span, completed sessions, warnings, redacted
//! admin actions, metrics lines, `RUST_LOG` overriding `log_level`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Result};
use serde_json::json;
use switchyard_tests::fleet::{Api, ADMIN_TOKEN, NODE_TOKEN};
use switchyard_tests::procs::{binary, write_file, Proc};
use switchyard_tests::{require_or_skip, status, Dovecot, ImapClient};

#[test]
fn check_accepts_the_examples_and_reports_every_problem_at_once() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (bin, file) in [("controlplane", "controlplane.toml"), ("dataplane", "dataplane.toml")] {
        let out = Command::new(binary(bin)?)
            .arg("--config")
            .arg(root.join("deploy/examples").join(file))
            .arg("--check")
            .output()?;
        ensure!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = tempfile::tempdir()?;
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[server]\nloglevel = \"info\"\n[routing]\ndefault_destination = \"missing\"\n[destination.a]\nhost = \"h\"\nbogus = 1\n[destination.a.protocol.imap]\nport = 0\n",
    )?;
    let out = Command::new(binary("controlplane")?).arg("--config").arg(&bad).arg("--check").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a bad config must fail --check");
    for problem in [
        "server.loglevel: unknown key",
        "destination.a.bogus: unknown key",
        "routing.default_destination",
        "destination.a.protocol.imap.port",
    ] {
        ensure!(stderr.contains(problem), "{problem:?} missing from:\n{stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_log_what_the_observability_seed_promises() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let mut dovecot = Dovecot::start(&[("alice@example.test", "pw")])?;
    let dir = tempfile::tempdir()?;
    let cp_toml = format!(
        "[server]\nmetrics_interval = \"300ms\"\nreport_interval = \"200ms\"\n[grpc]\nbind = \"127.0.0.1:0\"\n[api]\nbind = \"127.0.0.1:0\"\n\
         [routing]\ndefault_destination = \"legacy\"\n[mapping.sqlite]\npath = \"{}\"\n[breaker]\nconnect_retries = 0\n\
         [destination.legacy]\nhost = \"127.0.0.1\"\nallow_plaintext_auth = true\n[destination.legacy.protocol.imap]\nport = {}\ntls = \"plain\"\n",
        dir.path().join("m.db").display(),
        dovecot.imap_port()
    );
    let tokens = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];
    let cp = Proc::spawn("controlplane", &write_file(dir.path(), "cp.toml", &cp_toml)?, &tokens)?;
    let grpc = cp.bound(&["grpc listening"]).await?;
    let api = Api::new(cp.bound(&["management api listening"]).await?);

    // log_level says warn; RUST_LOG must win and bring info and dataplane debug lines.
    let dp_toml = format!(
        "[node]\nid = \"dp-log\"\nlog_level = \"warn\"\nmetrics_interval = \"300ms\"\n[control]\nendpoints = [\"http://{grpc}\"]\n[health]\nbind = \"127.0.0.1:0\"\n\
         [listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\nallow_plaintext_auth = true\n"
    );
    let dp_env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN), ("RUST_LOG", "info,dataplane=debug")];
    let dp = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &dp_toml)?, &dp_env)?;
    let imap = dp.bound(&["listening"]).await?;
    dp.wait_for(&["connected to the control plane"]).await?;

    let (code, body) = api.put("/mappings/alice@example.test", json!({"destination": "legacy"})).await?;
    ensure!(code == 200, "{body}");
    let mut client = ImapClient::connect(imap).await?;
    ensure!(status(&client.login("alice@example.test", "pw").await?) == "OK");
    client.logout().await?;

    let closed = dp.wait_for(&["session closed", "destination=legacy"]).await?;
    for field in [
        "listener=imap",
        "protocol=imap",
        "client=127.0.0.1:",
        "bytes_from_client=",
        "bytes_to_client=",
        "duration_ms=",
    ] {
        ensure!(closed.contains(field), "{field} missing: {closed}");
    }
    dp.wait_for(&["DEBUG", "routing decision", "account=al…#"]).await?;
    dp.wait_for(&["metrics", "cache_hits=1", "cache_misses=0", "hit_rate_pct=100", "active_connections="]).await?;
    cp.wait_for(&["fleet metrics", "cache_hits=1", "hit_rate_pct=100", "nodes=1"]).await?;
    let admin = cp.wait_for(&["admin: mapping set"]).await?;
    ensure!(admin.contains("account=al…#"), "{admin}");
    for line in cp.lines().iter().chain(dp.lines().iter()) {
        if line.contains("alice@example.test") {
            bail!("an account identifier reached the log unredacted: {line}");
        }
    }

    dovecot.stop()?;
    let mut client = ImapClient::connect(imap).await?;
    let refused = client.login("alice@example.test", "pw").await?;
    ensure!(refused.contains("NO [UNAVAILABLE]"), "{refused}");
    dp.wait_for(&["WARN", "backend unavailable", "legacy"]).await?;
    Ok(())
}
