//! The control link when one side stops reading: a route update written while a node's
//! stream is full still reaches it once it reads again (a real node process, SIGSTOP, a
//! flood of commands, two real Dovecots); a control plane still notices a node that went
//! silent behind a full stream, and its API answers within `api.ack_timeout`; a real
//! node still notices a control plane (scripted here) that went silent and stopped
//! reading its acks, and reconnects.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use switchyard_proto::v1 as pb;
use switchyard_proto::v1::control_client::ControlClient;
use switchyard_proto::v1::control_server::{Control, ControlServer};
use switchyard_tests::fleet::{Api, ControlPlane, NODE_TOKEN};
use switchyard_tests::nodeproc::NodeProc;
use switchyard_tests::{eventually, require_or_skip, Dovecot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status, Streaming};

const ALICE: &str = "alice@example.test";
const WAIT: Duration = Duration::from_secs(20);
/// `api.ack_timeout` in the test control plane's config.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Many `POST /connections/kick` at once, each for an account name of about 1 KiB so that
/// a few thousand fill a node's stream: its 256-message channel, the HTTP/2 send buffer
/// and the node's flow-control window.
/// The floods below hold thousands of API requests open at once, each waiting for node
/// acks: past `api.max_connections` (512 by default) they would be answered 503.
const FLOOD_CONNECTIONS: (&str, &str) = ("api", "max_connections = 8192");

struct Flood {
    answered: Arc<AtomicUsize>,
    /// Requests not answered within their bound.
    hung: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Flood {
    /// `count` kicks through the API at `addr`, each given up after `bound` (or the
    /// client's own 15 s).
    fn start(addr: std::net::SocketAddr, count: usize, bound: Duration) -> Flood {
        let identifier = format!("{}@example.test", "k".repeat(1000));
        let (answered, hung) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let api = Arc::new(Api::new(addr));
        let mut tasks = JoinSet::new();
        for _ in 0..count {
            let api = Arc::clone(&api);
            let path = format!("/connections/kick?identifier={identifier}");
            let (answered, hung) = (Arc::clone(&answered), Arc::clone(&hung));
            tasks.spawn(async move {
                match tokio::time::timeout(bound, api.post(&path)).await {
                    Ok(Ok(_)) => answered.fetch_add(1, Ordering::AcqRel),
                    _ => hung.fetch_add(1, Ordering::AcqRel),
                };
            });
        }
        Flood { answered, hung, tasks }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Acquire)
    }

    /// Waits for the first answer: `api.ack_timeout` has then passed since the first
    /// commands went out, so every request has been offered to the stream.
    async fn first_answer(&self) -> Result<()> {
        eventually(Duration::from_secs(60), || async {
            ensure!(self.answered() > 0, "no kick answered yet");
            Ok(())
        })
        .await
    }

    /// Waits for every request; returns how many were not answered within their bound.
    async fn finish(mut self) -> usize {
        while self.tasks.join_next().await.is_some() {}
        self.hung.load(Ordering::Acquire)
    }
}

async fn node_entry(api: &Api, id: &str) -> Result<Value> {
    let (_, nodes) = api.get("/nodes").await?;
    let all = nodes.as_array().cloned().unwrap_or_default();
    all.into_iter().find(|n| n["node_id"] == id).with_context(|| format!("{id} not in {nodes}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_update_written_while_a_nodes_stream_is_full_reaches_it_without_another_write() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    switchyard_tests::procs::raise_fd_limit(16_384)?;
    let legacy = Dovecot::start(&[(ALICE, "pw")])?;
    let new = Dovecot::start(&[(ALICE, "pw")])?;
    legacy.deliver(ALICE, "on legacy")?;
    new.deliver(ALICE, "on new")?;
    // Heartbeats every 30 s: neither side's silence timer (90 s) ends the stream during the
    // test, so the update has to travel on the stream that was full.
    let destinations = [("legacy", legacy.imap_port()), ("new", new.imap_port())];
    let keys = [("server", "heartbeat_interval = \"30s\""), FLOOD_CONNECTIONS];
    let cp = ControlPlane::start_keyed(&destinations, "legacy", &keys).await?;
    let api = cp.api();
    api.put(&format!("/mappings/{ALICE}"), json!({"destination": "legacy"})).await?;
    let node = NodeProc::start("dp-full", &[cp.endpoint()]).await?;
    node.wait_for(&["connected to the control plane"]).await?;
    let via = || switchyard_tests::inbox_subjects(node.imap, ALICE, "pw");
    assert_eq!(via().await?, Ok(vec!["on legacy".to_string()]), "cached on the node");

    node.stop()?;
    let flood = Flood::start(cp.api, 4000, Duration::from_secs(120));
    // The write comes once the control plane's channel for the node is full (256).
    eventually(Duration::from_secs(60), || async {
        let entry = node_entry(&api, "dp-full").await?;
        ensure!(entry["queued"] == 256, "{entry}");
        Ok(())
    })
    .await?;
    let before = flood.answered();
    let (code, put) = api.put(&format!("/mappings/{ALICE}"), json!({"destination": "new"})).await?;
    eprintln!("kicks answered before the write: {before} of 4000; the write answered {code}: {}", put["nodes"]);
    node.resume()?;

    let synced = eventually(WAIT, || async {
        let entry = node_entry(&api, "dp-full").await?;
        ensure!(entry["sync"] == "in_sync", "{entry}");
        Ok(())
    })
    .await;
    let route = via().await?;
    eprintln!("kicks not answered: {}", flood.finish().await);
    synced.context("the node never reached the store's revision")?;
    assert_eq!(route, Ok(vec!["on new".to_string()]), "the node routes the new destination");
    Ok(())
}

/// A node that says hello, takes its Welcome and then never reads its stream again; it
/// keeps sending heartbeats until [`DeafNode::go_silent`].
struct DeafNode {
    silent: CancellationToken,
    _inbound: Streaming<pb::ControlMessage>,
}

impl DeafNode {
    async fn connect(endpoint: &str, id: &str) -> Result<DeafNode> {
        // The smallest HTTP/2 windows, so a few hundred commands fill the stream.
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {NODE_TOKEN}").parse()?;
        let mut client = ControlClient::with_interceptor(channel, move |mut req: Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let hello = pb::Hello { node_id: id.into(), instance_id: format!("{id}-1"), ..Default::default() };
        tx.send(pb::NodeMessage { kind: Some(pb::node_message::Kind::Hello(hello)) }).await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = inbound.message().await?;
        ensure!(matches!(welcome, Some(pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(_)) })));
        let silent = CancellationToken::new();
        let stop = silent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let beat = pb::node_message::Kind::Heartbeat(pb::Heartbeat::default());
                        // Never blocks this sender: once the stream is full, beats are dropped.
                        let _ = tx.try_send(pb::NodeMessage { kind: Some(beat) });
                    }
                    // `tx` stays open: the stream is silent, not closed.
                    _ = stop.cancelled() => return std::future::pending::<()>().await,
                }
            }
        });
        Ok(DeafNode { silent, _inbound: inbound })
    }

    fn go_silent(&self) {
        self.silent.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_behind_a_full_stream_is_detected_and_the_api_answers_within_ack_timeout() -> Result<()> {
    switchyard_tests::procs::raise_fd_limit(8_192)?;
    // Heartbeats every 500 ms: the control plane calls a node silent after 1.5 s.
    let cp = ControlPlane::start_keyed(&[("legacy", 1)], "legacy", &[FLOOD_CONNECTIONS]).await?;
    let api = cp.api();
    let deaf = DeafNode::connect(&cp.endpoint(), "dp-deaf").await?;
    eventually(WAIT, || async {
        ensure!(node_entry(&api, "dp-deaf").await?["connected"] == true);
        Ok(())
    })
    .await?;

    let bound = ACK_TIMEOUT + Duration::from_secs(3);
    let flood = Flood::start(cp.api, 1500, bound);
    flood.first_answer().await?;
    deaf.go_silent();
    let silenced = Instant::now();
    let detected = eventually(Duration::from_secs(10), || async {
        let entry = node_entry(&api, "dp-deaf").await?;
        ensure!(entry["connected"] == false, "{entry}");
        Ok(())
    })
    .await;
    let detected_after = silenced.elapsed();
    let hung = flood.finish().await;
    assert!(
        hung == 0 && detected.is_ok(),
        "kicks not answered within {bound:?}: {hung} of 1500; silent node detected: {detected:?} after {detected_after:?}"
    );
    Ok(())
}

/// A scripted control plane: welcomes each Session, sends it `COMMANDS` probes with
/// 16 KiB ids (so the node's acks are large), then neither sends nor reads anything more.
/// It serves with the smallest HTTP/2 windows, so the unread acks fill the stream quickly.
#[derive(Clone, Default)]
struct DeafControl {
    sessions: Arc<AtomicUsize>,
}

const COMMANDS: usize = 200;

fn scripted_settings() -> pb::FleetSettings {
    pb::FleetSettings {
        destinations: vec![pb::Destination {
            id: "legacy".into(),
            host: "127.0.0.1".into(),
            forwarding: "none".into(),
            allow_plaintext_auth: true,
            endpoints: vec![pb::Endpoint {
                protocol: "imap".into(),
                port: 1,
                tls: "plain".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        default_destination: "legacy".into(),
        master_user_separators: vec!["%".into()],
        normalize: "lowercase".into(),
        cache: Some(pb::CacheSettings {
            positive_ttl_ms: 600_000,
            negative_ttl_ms: 30_000,
            max_entries: 1000,
            max_stale_ms: 3_600_000,
            ..Default::default()
        }),
        breaker: Some(pb::BreakerSettings {
            failure_threshold: 5,
            cooldown_ms: 30_000,
            connect_timeout_ms: 2_000,
            connect_retries: 0,
            login_timeout_ms: None,
        }),
        report_interval_ms: 60_000,
        // The node calls the control plane silent after three: 900 ms.
        heartbeat_interval_ms: 300,
        recipient_delimiter: None,
    }
}

type ScriptedStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Control for DeafControl {
    type SessionStream = ScriptedStream;

    async fn session(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<ScriptedStream>, Status> {
        let mut inbound = request.into_inner();
        inbound.message().await?;
        self.sessions.fetch_add(1, Ordering::AcqRel);
        let welcome = pb::control_message::Kind::Welcome(pb::Welcome {
            epoch: "scripted".into(),
            revision: 0,
            settings: Some(scripted_settings()),
            flush_cache: true,
        });
        let probes = (0..COMMANDS).map(|i| {
            let id = format!("{i:04}-{}", "x".repeat(16 * 1024));
            pb::control_message::Kind::Command(pb::Command { id, kind: Some(pb::command::Kind::Probe(pb::Probe {})) })
        });
        let messages = std::iter::once(welcome).chain(probes).map(|k| Ok(pb::ControlMessage { kind: Some(k) }));
        // Holds the node's stream open, unread, for as long as the node keeps it.
        let unread = futures::stream::unfold(inbound, |inbound| async move {
            std::future::pending::<()>().await;
            drop(inbound);
            None
        });
        Ok(Response::new(Box::pin(futures::stream::iter(messages).chain(unread))))
    }

    async fn resolve(&self, _: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        Err(Status::unavailable("scripted control plane"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_notices_a_silent_control_plane_that_stopped_reading_its_acks() -> Result<()> {
    let script = DeafControl::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .add_service(ControlServer::new(script.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    let node = NodeProc::start("dp-patient", &[endpoint]).await?;
    node.wait_for(&["connected to the control plane"]).await?;
    let reconnected = eventually(Duration::from_secs(15), || async {
        ensure!(script.sessions.load(Ordering::Acquire) >= 2, "still one session");
        Ok(())
    })
    .await;
    let silence = node.proc.lines().into_iter().find(|l| l.contains("silent for"));
    assert!(
        reconnected.is_ok(),
        "the node never noticed the silence (sessions: {}; silence logged: {silence:?}); its log:\n{}",
        script.sessions.load(Ordering::Acquire),
        node.proc.lines().join("\n")
    );
    Ok(())
}
