//! Who may talk to the control plane, on the real binaries: the node token is at least 32
//! characters on both sides, a run of wrong node tokens locks that address out of gRPC
//! (the others carry on), and a control link or a replica peer over cleartext `http://`
//! off loopback is refused by `--check` unless `allow_insecure_control = true` says the
//! operator means it, which is then logged as a warning.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use switchyard_tests::binfleet::BinFleet;
use switchyard_tests::fleet::{controlplane_toml, listener_toml, ADMIN_TOKEN, NODE_TOKEN};
use switchyard_tests::procs::{check_config, write_file, Proc};
use switchyard_tests::{eventually, free_port};
use tonic::transport::Endpoint;

/// A node config with `control` as its `[control]` table body.
fn node_toml(control: &str) -> String {
    format!(
        "[node]\nid = \"dp-t\"\n[control]\n{control}\n[health]\nbind = \"127.0.0.1:0\"\n{}",
        listener_toml("imap", "imap", "")
    )
}

/// Waits until `proc` exits; its log.
async fn exited(proc: &mut Proc) -> Result<String> {
    eventually(Duration::from_secs(15), || {
        let running = proc.is_running();
        let lines = proc.lines().join("\n");
        async move {
            ensure!(!running, "still running:\n{lines}");
            Ok(lines)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_node_token_stops_either_binary_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let short = "only-twenty-chars-ok";
    let cp_toml = controlplane_toml(&dir.path().join("m.db"), &[("legacy", 143)], "legacy");
    let tokens = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", short)];
    let mut cp = Proc::spawn("controlplane", &write_file(dir.path(), "cp.toml", &cp_toml)?, &tokens)?;
    let log = exited(&mut cp).await?;
    ensure!(log.contains("node token must be at least 32 characters"), "{log}");

    let endpoint = format!("endpoints = [\"http://127.0.0.1:{}\"]", free_port());
    let env = [("SWITCHYARD_NODE_TOKEN", short)];
    let mut node = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &node_toml(&endpoint))?, &env)?;
    let log = exited(&mut node).await?;
    ensure!(log.contains("node token must be at least 32 characters"), "{log}");
    Ok(())
}

/// One `Resolve` with `token` from `from`: the status code (`Ok` when answered).
async fn resolve(grpc: std::net::SocketAddr, from: IpAddr, token: &str) -> Result<tonic::Code> {
    let channel = Endpoint::from_shared(format!("http://{grpc}"))?.local_address(Some(from)).connect().await?;
    let mut client = ControlClient::new(channel);
    let mut request = tonic::Request::new(pb::ResolveRequest { key: "alice@example.test".into() });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(match client.resolve(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_node_tokens_lock_their_address_out_of_grpc_and_no_other() -> Result<()> {
    let destination = "[destination.legacy]\nhost = \"127.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n";
    let fleet = BinFleet::start(destination, "legacy", |c| c, &listener_toml("imap", "imap", "")).await?;
    let grpc = fleet.cp.bound(&["grpc listening"]).await?;
    let (guesser, other): (IpAddr, IpAddr) = ("127.0.0.1".parse()?, "127.0.0.2".parse()?);
    ensure!(resolve(grpc, guesser, NODE_TOKEN).await? == tonic::Code::Ok, "the right token is answered");
    // The default `[grpc] lockout_threshold` is 10 failures within a minute.
    for i in 0..10 {
        let wrong = format!("{}{i}", &NODE_TOKEN[..NODE_TOKEN.len() - 1]);
        let code = resolve(grpc, guesser, &wrong).await?;
        ensure!(code == tonic::Code::Unauthenticated, "wrong token {i}: {code:?}");
    }
    let code = resolve(grpc, guesser, NODE_TOKEN).await?;
    ensure!(code == tonic::Code::ResourceExhausted, "the locked-out address with the right token: {code:?}");
    ensure!(resolve(grpc, other, NODE_TOKEN).await? == tonic::Code::Ok, "another address is not locked out");
    fleet.cp.wait_for(&["WARN", "too many failed node-token attempts", "client=127.0.0.1"]).await?;
    Ok(())
}

#[tokio::test]
async fn cleartext_control_off_loopback_is_refused_unless_the_operator_opts_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let refused = node_toml("endpoints = [\"https://10.0.0.1:7400\", \"http://192.0.2.10:7400\"]");
    let (ok, stderr) = check_config(dir.path(), "dataplane", &refused)?;
    ensure!(!ok, "an http:// control endpoint off loopback must fail --check");
    ensure!(stderr.contains("control.endpoints[1]") && stderr.contains("allow_insecure_control"), "{stderr}");
    ensure!(!stderr.contains("control.endpoints[0]"), "https is fine: {stderr}");
    let loopback =
        node_toml("endpoints = [\"http://127.0.0.2:7400\", \"http://localhost:7400\", \"http://[::1]:7400\"]");
    let (ok, stderr) = check_config(dir.path(), "dataplane", &loopback)?;
    ensure!(ok, "loopback control endpoints need no TLS: {stderr}");
    let opted = node_toml("endpoints = [\"http://192.0.2.10:7400\"]\nallow_insecure_control = true");
    let (ok, stderr) = check_config(dir.path(), "dataplane", &opted)?;
    ensure!(ok, "allow_insecure_control = true accepts it: {stderr}");

    let cp = |cluster: &str| {
        controlplane_toml(&dir.path().join("m.db"), &[("legacy", 143)], "legacy") + "[cluster]\n" + cluster
    };
    let (ok, stderr) = check_config(dir.path(), "controlplane", &cp("peers = [\"http://192.0.2.20:7480\"]\n"))?;
    ensure!(!ok, "an http:// peer off loopback must fail --check");
    ensure!(stderr.contains("cluster.peers[0]") && stderr.contains("allow_insecure_control"), "{stderr}");
    let (ok, stderr) = check_config(
        dir.path(),
        "controlplane",
        &cp("peers = [\"http://127.0.0.1:7481\", \"https://192.0.2.20:7480\"]\n"),
    )?;
    ensure!(ok, "loopback http and https peers are fine: {stderr}");
    let opted = cp("peers = [\"http://192.0.2.20:7480\"]\nallow_insecure_control = true\n");
    let (ok, stderr) = check_config(dir.path(), "controlplane", &opted)?;
    ensure!(ok, "allow_insecure_control = true accepts it: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_cleartext_control_link_is_logged_as_a_warning() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // 0.0.0.0 is not loopback as written, yet stays on this host: nothing leaves it.
    let (port, peer_port) = (free_port(), free_port());
    let control = format!("endpoints = [\"http://0.0.0.0:{port}\"]\nallow_insecure_control = true");
    let env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];
    let node = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &node_toml(&control))?, &env)?;
    node.wait_for(&["WARN", "allow_insecure_control", &format!("http://0.0.0.0:{port}")]).await?;

    let cluster = format!("[cluster]\npeers = [\"http://0.0.0.0:{peer_port}\"]\nallow_insecure_control = true\n");
    let cp_toml = controlplane_toml(&dir.path().join("m.db"), &[("legacy", 143)], "legacy") + &cluster;
    let tokens = [("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN), ("SWITCHYARD_NODE_TOKEN", NODE_TOKEN)];
    let cp = Proc::spawn("controlplane", &write_file(dir.path(), "cp.toml", &cp_toml)?, &tokens)?;
    let line = cp.wait_for(&["WARN", "allow_insecure_control"]).await.context("control plane warning")?;
    ensure!(line.contains(&format!("http://0.0.0.0:{peer_port}")), "{line}");
    Ok(())
}
