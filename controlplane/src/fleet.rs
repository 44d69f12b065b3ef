//! The control plane's view of its nodes: who is connected, what they last reported,
//! which revision they applied, and the commands waiting for their acks.
//!
//! One process holds a node id at a time ([`claim`]). Nothing sent to a node waits on it:
//! its stream pulls route updates from its outbox when it has room ([`stream`]), a
//! command waits for room at most until its deadline, and a heartbeat that finds no
//! room is skipped.

mod claim;
mod results;
mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::commands::CommandLog;
use crate::error::Result;
use crate::node_info::{CommandAck, CommandKind, ListenerInfo, NodeCommand, NodeEvent, NodeHello, NodeReport};
use crate::outbox::Outbox;
use crate::route::RouteUpdate;
use crate::wire;
pub use claim::{Refused, REFUSAL_MEMORY};
use results::{applied_outcome, applied_result, send_command};
pub use results::{NodeOutcome, NodeResult};
pub use stream::Messages;

/// Commands and heartbeats for one node's stream; its route updates wait in its outbox.
pub type CommandSender = mpsc::Sender<pb::ControlMessage>;

/// What the fleet knows of one node id: its current (or last) stream and process, what it
/// reported and applied, its outbox, and the commands waiting for its acks.
#[derive(Debug)]
struct NodeState {
    hello: NodeHello,
    /// Identifies the current stream, so a late disconnect of an old stream is ignored.
    stream_id: u64,
    tx: Option<CommandSender>,
    /// Where the current stream connects from.
    address: Option<SocketAddr>,
    /// Ends the current stream and its pump: the node left, or a newer stream replaced it.
    stop: CancellationToken,
    /// Tells the current stream that its outbox may have an update to send.
    wake: Arc<Notify>,
    connected_at: Instant,
    last_seen: Instant,
    report: Option<NodeReport>,
    report_at: Option<Instant>,
    applied: (String, u64),
    pending: HashMap<String, oneshot::Sender<CommandAck>>,
    outbox: Outbox,
    /// Processes refused because this id was held.
    refused: Vec<Refused>,
}

/// A stream the fleet accepted: its id, what ends it, and its outbox's wakeup.
#[derive(Debug)]
pub struct Registration {
    pub stream_id: u64,
    /// Cancelled when the node disconnects or a newer stream replaces this one.
    pub stop: CancellationToken,
    wake: Arc<Notify>,
}

/// A read-only copy of one node's state for the API and the metrics line.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_id: String,
    pub instance_id: String,
    pub version: String,
    pub listeners: Vec<ListenerInfo>,
    /// Where the current (or last) stream connects from.
    pub address: Option<SocketAddr>,
    pub connected: bool,
    pub stale: bool,
    pub applied_revision: u64,
    pub applied_epoch: String,
    pub last_report_age: Option<Duration>,
    pub report: Option<NodeReport>,
    /// Messages waiting in the control plane for the node's stream to take them.
    pub queued: usize,
    /// Other processes with this node id, refused while this one held it.
    pub refused: Vec<Refused>,
}

/// This replica's nodes, by node id, behind one short-held lock (never held across an
/// `.await`). Route updates enter through [`push`](Fleet::push), called in revision order
/// by [`crate::publisher::Publisher`] only; commands through [`command`](Fleet::command).
/// A write's result is read back with [`wait_applied`](Fleet::wait_applied).
#[derive(Debug)]
pub struct Fleet {
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Recent commands, replayed to nodes that come back before they expire.
    pub log: CommandLog,
    /// Woken on every ack and disconnect so waiters re-check.
    changed: Notify,
    next_stream: std::sync::atomic::AtomicU64,
    heartbeat_interval: Duration,
    /// How long a node that left stays listed (`server.node_retention`).
    retention: Duration,
}

/// Nodes that left kept at most, oldest forgotten first, whatever the retention: node ids
/// are chosen by whoever holds the node token.
const MAX_DEPARTED: usize = 10_000;

impl Fleet {
    /// With the default retention of nodes that left (a day).
    pub fn new(heartbeat_interval: Duration) -> Arc<Self> {
        Self::with_retention(heartbeat_interval, Duration::from_secs(24 * 3600))
    }

    pub fn with_retention(heartbeat_interval: Duration, retention: Duration) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::default(),
            log: CommandLog::default(),
            changed: Notify::new(),
            next_stream: Default::default(),
            heartbeat_interval,
            retention,
        })
    }

    /// Forgets the nodes that left longer than the retention ago, and the oldest of them
    /// past [`MAX_DEPARTED`].
    fn prune(&self, nodes: &mut HashMap<String, NodeState>) {
        nodes.retain(|_, e| e.tx.is_some() || e.last_seen.elapsed() <= self.retention);
        let departed = nodes.values().filter(|e| e.tx.is_none()).count();
        if departed > MAX_DEPARTED {
            let mut by_age: Vec<(Instant, String)> =
                nodes.values().filter(|e| e.tx.is_none()).map(|e| (e.last_seen, e.hello.node_id.clone())).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(departed - MAX_DEPARTED) {
                nodes.remove(&id);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeState>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn silence(&self) -> Duration {
        self.heartbeat_interval * 3
    }

    /// Refuses a Hello whose node id a live process holds (see [`claim`]), before any
    /// work is done for it; [`connect`](Self::connect) checks again.
    pub fn check_claim(&self, hello: &NodeHello, address: Option<SocketAddr>) -> Result<()> {
        match self.lock().get_mut(&hello.node_id) {
            Some(entry) => entry.admit(hello, address, self.silence()).map(drop),
            None => Ok(()),
        }
    }

    /// Registers a node's new stream (replacing the same process's old one, or a silent
    /// holder's), or refuses it while another live process holds the id. A new instance
    /// id starts its counters afresh. `in_flight` is the revision of a replay queued
    /// ahead of the stream (0: none).
    pub fn connect(
        &self,
        hello: NodeHello,
        address: Option<SocketAddr>,
        applied: (String, u64),
        in_flight: u64,
        tx: CommandSender,
    ) -> Result<Registration> {
        let silence = self.silence();
        let mut nodes = self.lock();
        self.prune(&mut nodes);
        if let Some(entry) = nodes.get_mut(&hello.node_id) {
            let claim = entry.admit(&hello, address, silence)?;
            entry.supersede(claim, &hello);
        }
        let stream_id = self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let registration = Registration { stream_id, stop: CancellationToken::new(), wake: Arc::new(Notify::new()) };
        let now = Instant::now();
        let entry = nodes.entry(hello.node_id.clone()).or_insert_with(|| NodeState {
            hello: hello.clone(),
            stream_id,
            tx: None,
            address,
            stop: registration.stop.clone(),
            wake: Arc::clone(&registration.wake),
            connected_at: now,
            last_seen: now,
            report: None,
            report_at: None,
            applied: applied.clone(),
            pending: HashMap::new(),
            outbox: Outbox::default(),
            refused: Vec::new(),
        });
        if entry.hello.instance_id != hello.instance_id {
            entry.report = None;
            entry.report_at = None;
        }
        entry.refused.retain(|r| r.instance_id != hello.instance_id);
        entry.hello = hello;
        entry.stream_id = stream_id;
        entry.tx = Some(tx);
        entry.address = address;
        entry.stop = registration.stop.clone();
        entry.wake = Arc::clone(&registration.wake);
        entry.connected_at = now;
        entry.last_seen = now;
        entry.outbox = Outbox::new(&applied.0, in_flight);
        entry.applied = applied;
        Ok(registration)
    }

    pub fn disconnect(&self, node_id: &str, stream_id: u64) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(node_id).filter(|e| e.stream_id == stream_id) {
            entry.tx = None;
            entry.stop.cancel();
            // Dropping the senders makes every waiting command see "not connected".
            entry.pending.clear();
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    /// Whether a newer stream of `node_id` replaced `stream_id`.
    fn superseded(&self, node_id: &str, stream_id: u64) -> bool {
        self.lock().get(node_id).is_some_and(|e| e.stream_id != stream_id && e.tx.is_some())
    }

    /// The node's merged route changes, if its stream is `stream_id` and it acked what was
    /// in flight.
    fn take_update(&self, node_id: &str, stream_id: u64) -> Option<RouteUpdate> {
        let mut nodes = self.lock();
        let entry = nodes.get_mut(node_id).filter(|e| e.stream_id == stream_id && e.tx.is_some())?;
        entry.outbox.ready(&entry.applied)
    }

    /// Records one message from a node's stream.
    pub fn on_message(&self, node_id: &str, stream_id: u64, event: NodeEvent) {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(node_id).filter(|e| e.stream_id == stream_id) else {
            return;
        };
        entry.last_seen = Instant::now();
        match event {
            NodeEvent::Report(report) => {
                entry.report = Some(report);
                entry.report_at = Some(Instant::now());
            }
            NodeEvent::RevisionAck { epoch, revision } => {
                entry.applied = (epoch, revision);
                entry.wake.notify_one();
            }
            NodeEvent::CommandAck(ack) => {
                self.log.acked(&ack.command_id, node_id);
                if let Some(waiter) = entry.pending.remove(&ack.command_id) {
                    let _ = waiter.send(ack);
                }
            }
            NodeEvent::Alive => return,
        }
        drop(nodes);
        self.changed.notify_waiters();
    }

    fn is_stale(&self, entry: &NodeState) -> bool {
        entry.last_seen.elapsed() > self.silence()
    }

    pub fn views(&self) -> Vec<NodeView> {
        let mut nodes = self.lock();
        self.prune(&mut nodes);
        let mut views: Vec<NodeView> = nodes
            .values()
            .map(|e| NodeView {
                node_id: e.hello.node_id.clone(),
                instance_id: e.hello.instance_id.clone(),
                version: e.hello.version.clone(),
                listeners: e.hello.listeners.clone(),
                address: e.address,
                connected: e.tx.is_some(),
                stale: e.tx.is_none() || self.is_stale(e),
                applied_revision: e.applied.1,
                applied_epoch: e.applied.0.clone(),
                last_report_age: e.report_at.map(|t| t.elapsed()),
                report: e.report.clone(),
                queued: e.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity()),
                refused: e.recent_refusals(),
            })
            .collect();
        views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        views
    }

    pub fn knows(&self, node_id: &str) -> bool {
        self.lock().contains_key(node_id)
    }

    fn senders(&self) -> Vec<(String, CommandSender)> {
        self.lock().values().filter_map(|e| e.tx.clone().map(|tx| (e.hello.node_id.clone(), tx))).collect()
    }

    /// Queues a route update for every connected node (call in revision order): its stream
    /// sends it as soon as it has room if the node acked everything before, merged into
    /// the next update otherwise.
    pub fn push(&self, update: RouteUpdate) {
        for entry in self.lock().values_mut().filter(|e| e.tx.is_some()) {
            entry.outbox.add(&update);
            entry.wake.notify_one();
        }
    }

    /// Waits until every node connected now has applied `revision` of `epoch`, or the timeout.
    pub async fn wait_applied(&self, epoch: &str, revision: u64, timeout: Duration) -> Vec<NodeResult> {
        let deadline = Instant::now() + timeout;
        let targets: Vec<String> = self.senders().into_iter().map(|(id, _)| id).collect();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Checked without building results: at 1000 nodes a rebuild per ack made each
            // write quadratic.
            let waiting = {
                let nodes = self.lock();
                targets.iter().any(|id| applied_outcome(&nodes, id, epoch, revision) == NodeOutcome::Timeout)
            };
            if !waiting || tokio::time::timeout_at(deadline, changed).await.is_err() {
                let nodes = self.lock();
                return targets.iter().map(|id| applied_result(&nodes, id, epoch, revision)).collect();
            }
        }
    }

    /// Sends one command to every connected node (or just `only`) and collects the acks,
    /// all within `timeout`: a node whose stream has no room for it by then is `timeout`
    /// too. Known nodes that are not connected are listed as `not_connected`.
    pub async fn command(&self, kind: CommandKind, only: Option<&str>, timeout: Duration) -> Vec<NodeResult> {
        let id = uuid::Uuid::new_v4().to_string();
        self.log.record(&id, &kind, only);
        let message = wire::command_message(NodeCommand { id: id.clone(), kind });
        let mut waiting = Vec::new();
        let mut results = Vec::new();
        {
            let mut nodes = self.lock();
            for entry in nodes.values_mut().filter(|e| only.is_none_or(|o| o == e.hello.node_id)) {
                let result = NodeResult::new(&entry.hello.node_id, &entry.hello.instance_id, NodeOutcome::NotConnected);
                match &entry.tx {
                    Some(tx) => {
                        let (done, ack) = oneshot::channel();
                        entry.pending.insert(id.clone(), done);
                        waiting.push((result, tx.clone(), ack));
                    }
                    None => results.push(result),
                }
            }
        }
        let deadline = Instant::now() + timeout;
        let acks =
            waiting.into_iter().map(|(result, tx, ack)| send_command(result, tx, message.clone(), ack, deadline));
        results.extend(futures::future::join_all(acks).await);
        self.forget(&id);
        results.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        results
    }

    fn forget(&self, command_id: &str) {
        for entry in self.lock().values_mut() {
            entry.pending.remove(command_id);
        }
    }
}

#[cfg(test)]
mod tests;
