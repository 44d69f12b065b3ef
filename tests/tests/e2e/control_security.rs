//! The control plane's own doors, end to end in this process: the management API over TLS
//! and its per-address lockout, nodes over `https://` gRPC with and without client
//! certificates, wrong tokens, and garbage on the gRPC port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use switchyard_tests::fleet::{listener_toml, ControlPlane, ADMIN_TOKEN, NODE_TOKEN};
use switchyard_tests::TestPki;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const WAIT: Duration = Duration::from_secs(15);

/// `key = "path"` for a config.
fn key(name: &str, path: &Path) -> String {
    format!("{name} = {:?}\n", path.display().to_string())
}

/// A control plane whose `[grpc]` and `[api]` tables get `grpc` and `api` added.
async fn control_plane(grpc: &str, api: &str) -> Result<ControlPlane> {
    ControlPlane::start_keyed(&[("legacy", 1)], "legacy", &[("grpc", grpc.trim_end()), ("api", api.trim_end())]).await
}

/// A data-plane node started like the binary, with `control` added to its `[control]`.
struct TestNode {
    shutdown: CancellationToken,
    _task: JoinHandle<()>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_node(id: &str, endpoint: &str, token: &str, control: &str) -> Result<TestNode> {
    let toml = format!(
        "[node]\nid = \"{id}\"\n[control]\nendpoints = [\"{endpoint}\"]\n{control}\n[health]\nbind = \"127.0.0.1:0\"\n{}",
        listener_toml("imap", "imap", "")
    );
    let config = dataplane::config::Config::from_toml_str(&toml)?;
    let bound = dataplane::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let (stop, token) = (shutdown.clone(), token.to_string());
    let task = tokio::spawn(async move {
        if let Err(e) = dataplane::run(config, bound, Some(token), stop).await {
            eprintln!("node stopped: {e}");
        }
    });
    Ok(TestNode { shutdown, _task: task })
}

/// Node ids `/nodes` shows connected.
async fn connected_nodes(cp: &ControlPlane) -> Result<Vec<String>> {
    Ok(cp.api().connected_nodes("").await?.0)
}

async fn until_connected(cp: &ControlPlane, id: &str) -> Result<Vec<String>> {
    Ok(cp.api().until_nodes("", WAIT, |ids| ids.iter().any(|i| i == id)).await?.0)
}

/// Opens a Session directly and waits for the Welcome: `Err` with the reason otherwise.
async fn open_session(endpoint: String, tls: ClientTlsConfig, token: &str) -> Result<(), String> {
    let channel = Endpoint::from_shared(endpoint)
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let hello = pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node_id: "direct".into(),
            instance_id: "direct-1".into(),
            ..Default::default()
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![hello]));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut client = ControlClient::new(channel);
    let session = tokio::time::timeout(Duration::from_secs(10), client.session(request));
    let mut inbound = session.await.map_err(|_| "timed out".to_string())?.map_err(|s| format!("{s:?}"))?.into_inner();
    match inbound.message().await {
        Ok(Some(pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(_)) })) => Ok(()),
        other => Err(format!("no welcome: {other:?}")),
    }
}

fn trusting(pki: &TestPki) -> Result<ClientTlsConfig> {
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(pki.ca_pem_path())?)))
}

fn identity((cert, key): &(std::path::PathBuf, std::path::PathBuf)) -> Result<Identity> {
    Ok(Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?))
}

fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    Ok(reqwest::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(10)).build()?)
}

/// `GET url` with `token`: status, `Retry-After`, body.
async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<(u16, Option<String>, Value)> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| url.to_string())?;
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, retry, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_tls_answers_trusted_clients_and_refuses_plain_http() -> Result<()> {
    let pki = TestPki::new()?;
    let (cert, tls_key) = pki.issue(&["127.0.0.1", "localhost"])?;
    let cp = control_plane("", &(key("tls_cert", &cert) + &key("tls_key", &tls_key))).await?;
    let client = https_client(&pki.ca_pem_path())?;
    for host in ["127.0.0.1", "localhost"] {
        let base = format!("https://{host}:{}", cp.api.port());
        assert_eq!(get(&client, &format!("{base}/healthz"), None).await?.0, 200);
        let (code, _, stats) = get(&client, &format!("{base}/stats"), Some(ADMIN_TOKEN)).await?;
        assert_eq!(code, 200, "{stats}");
        assert_eq!(stats["nodes"], serde_json::json!([]));
        assert_eq!(get(&client, &format!("{base}/stats"), None).await?.0, 401);
    }
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let refused = plain.get(format!("http://{}/healthz", cp.api)).send().await;
    assert!(refused.is_err(), "plain HTTP must not be answered: {refused:?}");
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let unknown_ca = untrusting.get(format!("https://{}/healthz", cp.api)).send().await;
    assert!(unknown_ca.is_err(), "a client that does not trust the CA gets no answer: {unknown_ca:?}");
    assert_eq!(get(&client, &format!("https://{}/healthz", cp.api), None).await?.0, 200, "still serving");
    Ok(())
}

/// Three failures lock `client` out; the right token is refused meanwhile, health is not.
async fn assert_lockout(client: &reqwest::Client, base: &str) -> Result<()> {
    for token in [None, Some("wrong"), Some(&ADMIN_TOKEN[1..])] {
        assert_eq!(get(client, &format!("{base}/stats"), token).await?.0, 401);
    }
    let (code, retry, body) = get(client, &format!("{base}/stats"), Some(ADMIN_TOKEN)).await?;
    assert_eq!((code, retry.as_deref()), (429, Some("300")), "{body}");
    assert_eq!(get(client, &format!("{base}/nodes"), Some(ADMIN_TOKEN)).await?.0, 429);
    assert_eq!(get(client, &format!("{base}/healthz"), None).await?.0, 200);
    assert_eq!(get(client, &format!("{base}/readyz"), None).await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_one_address_out_and_leave_health_and_others_alone() -> Result<()> {
    let cp = control_plane("", "lockout_threshold = 3\n").await?;
    let attacker = reqwest::Client::builder().local_address("127.0.0.1".parse().ok()).build()?;
    assert_lockout(&attacker, &format!("http://{}", cp.api)).await?;
    // Another loopback address is another client.
    let operator = reqwest::Client::builder().local_address("127.0.0.2".parse().ok()).build()?;
    assert_eq!(get(&operator, &format!("http://{}/stats", cp.api), Some(ADMIN_TOKEN)).await?.0, 200);

    let pki = TestPki::new()?;
    let (cert, tls_key) = pki.issue(&["127.0.0.1"])?;
    let tls = key("tls_cert", &cert) + &key("tls_key", &tls_key) + "lockout_threshold = 3\n";
    let cp = control_plane("", &tls).await?;
    assert_lockout(&https_client(&pki.ca_pem_path())?, &format!("https://{}", cp.api)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_syncs_over_https_grpc_trusting_the_test_ca() -> Result<()> {
    let pki = TestPki::new()?;
    let (cert, tls_key) = pki.issue(&["127.0.0.1", "localhost"])?;
    let cp = control_plane(&(key("tls_cert", &cert) + &key("tls_key", &tls_key)), "").await?;
    let endpoint = format!("https://{}", cp.grpc);
    let _node = start_node("dp-tls", &endpoint, NODE_TOKEN, &key("tls_ca", &pki.ca_pem_path())).await?;
    until_connected(&cp, "dp-tls").await?;
    // Plain gRPC to a TLS port gets nowhere.
    let _plain = start_node("dp-plain", &format!("http://{}", cp.grpc), NODE_TOKEN, "").await?;
    let other_pki = TestPki::new()?;
    let _distrusting =
        start_node("dp-other-ca", &endpoint, NODE_TOKEN, &key("tls_ca", &other_pki.ca_pem_path())).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(connected_nodes(&cp).await?, ["dp-tls"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_ca_only_nodes_with_a_certificate_and_the_token_get_a_session() -> Result<()> {
    let pki = TestPki::new()?;
    let (cert, tls_key) = pki.issue(&["127.0.0.1"])?;
    let grpc = key("tls_cert", &cert) + &key("tls_key", &tls_key) + &key("client_ca", &pki.ca_pem_path());
    let cp = control_plane(&grpc, "").await?;
    let endpoint = format!("https://{}", cp.grpc);
    let node_pair = pki.issue(&["dp-cert"])?;
    let foreign = TestPki::new()?;
    let foreign_pair = foreign.issue(&["dp-foreign"])?;

    let no_cert = open_session(endpoint.clone(), trusting(&pki)?, NODE_TOKEN).await;
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");
    let other_ca = open_session(endpoint.clone(), trusting(&pki)?.identity(identity(&foreign_pair)?), NODE_TOKEN).await;
    assert!(other_ca.is_err(), "a certificate from another CA: {other_ca:?}");
    let wrong_token = open_session(endpoint.clone(), trusting(&pki)?.identity(identity(&node_pair)?), "wrong").await;
    let wrong_token = wrong_token.expect_err("a valid certificate does not replace the token");
    assert!(wrong_token.contains("Unauthenticated"), "{wrong_token}");
    open_session(endpoint.clone(), trusting(&pki)?.identity(identity(&node_pair)?), NODE_TOKEN)
        .await
        .map_err(anyhow::Error::msg)?;

    let ca = key("tls_ca", &pki.ca_pem_path());
    let with_cert = ca.clone() + &key("tls_client_cert", &node_pair.0) + &key("tls_client_key", &node_pair.1);
    let _without = start_node("dp-no-cert", &endpoint, NODE_TOKEN, &ca).await?;
    let _bad_token =
        start_node("dp-bad-token", &endpoint, "not-the-node-token-but-32-characters-long", &with_cert).await?;
    let _with = start_node("dp-cert", &endpoint, NODE_TOKEN, &with_cert).await?;
    until_connected(&cp, "dp-cert").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(connected_nodes(&cp).await?, ["dp-cert"]);
    Ok(())
}

/// Junk, a fake TLS record, and clients that connect and say nothing.
async fn throw_garbage(addr: SocketAddr) -> Result<Vec<tokio::net::TcpStream>> {
    let mut idle = Vec::new();
    let mut junk: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
    junk.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    for payload in
        [junk, vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff".to_vec()]
    {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.write_all(&payload).await;
        idle.push(stream);
    }
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(addr).await?);
    }
    Ok(idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_does_not_keep_the_next_node_out() -> Result<()> {
    let pki = TestPki::new()?;
    let (cert, tls_key) = pki.issue(&["127.0.0.1"])?;
    let tls_cp = control_plane(&(key("tls_cert", &cert) + &key("tls_key", &tls_key)), "").await?;
    let plain_cp = control_plane("", "").await?;
    for (cp, scheme, control) in
        [(&tls_cp, "https", key("tls_ca", &pki.ca_pem_path())), (&plain_cp, "http", String::new())]
    {
        let _held_open = throw_garbage(cp.grpc).await?;
        let id = format!("dp-after-garbage-{scheme}");
        let _node = start_node(&id, &format!("{scheme}://{}", cp.grpc), NODE_TOKEN, &control).await?;
        until_connected(cp, &id).await?;
        assert_eq!(cp.api().get("/healthz").await?.0, 200);
    }
    Ok(())
}
