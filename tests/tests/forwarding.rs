//! Client identity end to end: a trusted load balancer's PROXY header names the real
//! client to the node, and the node forwards it to real Dovecot, whose log shows it.

use anyhow::{ensure, Result};
use serde_json::json;
use switchyard_tests::fleet::{destination_toml, listener_toml, ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::{eventually, free_port, require_or_skip, status, Dovecot, ImapClient};
use tokio::io::AsyncWriteExt;

const USERS: &[(&str, &str)] = &[("alice@example.test", "pw")];
const REAL_CLIENT: &str = "203.0.113.50:40000";

/// A Dovecot with an extra IMAP listener that expects a PROXY header from loopback.
fn dovecot_with_haproxy_listener() -> Result<(Dovecot, u16)> {
    let port = free_port();
    let extra = format!(
        "haproxy_trusted_networks = 127.0.0.0/8\nservice imap-login {{\n  inet_listener imap_haproxy {{\n    port = {port}\n    haproxy = yes\n  }}\n}}\n"
    );
    Ok((Dovecot::start_with(USERS, &extra)?, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_logs_the_real_client_behind_a_load_balancer_and_the_node() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let (dovecot, haproxy_port) = dovecot_with_haproxy_listener()?;
    let tables = destination_toml("legacy", &[("imap", haproxy_port)], "forwarding = \"proxy\"");
    let cp = ControlPlane::start_destinations(&tables, "legacy").await?;
    let listener = listener_toml("imap", "imap", "proxy_protocol = \"required\"\nproxy_trusted = [\"127.0.0.0/8\"]");
    let node = Node::start_listeners("dp-1", &[cp.endpoint()], Some(NODE_TOKEN), &listener).await?;
    eventually(std::time::Duration::from_secs(10), || async {
        let (code, body) = node.readyz().await?;
        ensure!(code == 200, "{body}");
        Ok(())
    })
    .await?;
    cp.api().put("/mappings/alice@example.test", json!({"destination": "legacy"})).await?;

    // The test plays the load balancer: PROXY v2 header naming the real client first.
    let mut lb = tokio::net::TcpStream::connect(node.imap).await?;
    let header = dataplane::codec::proxy::encode_v2(REAL_CLIENT.parse()?, node.imap);
    lb.write_all(&header).await?;
    let mut imap = ImapClient::from_stream(lb).await?;
    let tagged = imap.login("alice@example.test", "pw").await?;
    assert_eq!(status(&tagged), "OK", "{tagged}");
    imap.logout().await?;
    eventually(std::time::Duration::from_secs(5), || async {
        let log = dovecot.log();
        let line = log.lines().find(|l| l.contains("Login: user=<alice@example.test>"));
        ensure!(line.is_some_and(|l| l.contains("rip=203.0.113.50")), "no login from the real client in:\n{log}");
        Ok(())
    })
    .await?;

    // Without a header the listener (proxy_protocol = required) closes the connection.
    let mut bare = tokio::net::TcpStream::connect(node.imap).await?;
    bare.write_all(b"a1 CAPABILITY\r\n").await?;
    let mut buf = [0u8; 64];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut bare, &mut buf))
            .await?;
    // Closed without a greeting: an orderly EOF, or a reset because our bytes went unread.
    match read {
        Ok(n) => assert_eq!(n, 0, "no greeting expected: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    Ok(())
}
