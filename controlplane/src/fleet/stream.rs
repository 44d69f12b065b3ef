//! One node's Session stream as the control plane sends it: the Welcome (and its replay)
//! first; then route updates, taken from the node's outbox only when the stream asks for
//! its next message, i.e. when it has room, so an update can never be dropped on a full
//! stream nor wait for a retry; and commands and heartbeats from a bounded channel. It
//! ends when its node disconnects, or with `aborted` when a newer stream of the same node
//! id replaces it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use switchyard_proto::v1 as pb;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{Fleet, Registration};
use crate::route::RouteUpdate;
use crate::wire;

/// What tonic sends down a node's Session.
pub type Messages = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

struct Source {
    fleet: Arc<Fleet>,
    node_id: String,
    stream_id: u64,
    first: VecDeque<pb::ControlMessage>,
    channel: mpsc::Receiver<pb::ControlMessage>,
    stop: CancellationToken,
    wake: Arc<Notify>,
    ended: bool,
}

enum Next {
    Stopped,
    Update(RouteUpdate),
    /// Boxed: a message carrying fleet settings is several times the size of the others.
    Channel(Option<Box<pb::ControlMessage>>),
}

impl Fleet {
    /// The stream for the node registered as `registration`: `first`, then its outbox and
    /// `channel` (the receiving end of the sender given to [`Fleet::connect`]).
    pub fn messages(
        self: &Arc<Self>,
        node_id: &str,
        registration: &Registration,
        first: Vec<pb::ControlMessage>,
        channel: mpsc::Receiver<pb::ControlMessage>,
    ) -> Messages {
        let source = Source {
            fleet: Arc::clone(self),
            node_id: node_id.to_string(),
            stream_id: registration.stream_id,
            first: first.into(),
            channel,
            stop: registration.stop.clone(),
            wake: Arc::clone(&registration.wake),
            ended: false,
        };
        Box::pin(futures::stream::unfold(source, next))
    }

    /// Waits until the node's outbox has an update it may send now, and takes it.
    async fn next_update(&self, node_id: &str, stream_id: u64, wake: &Notify) -> RouteUpdate {
        loop {
            if let Some(update) = self.take_update(node_id, stream_id) {
                return update;
            }
            // A push or an ack between the check and here left a permit: no wakeup is lost.
            wake.notified().await;
        }
    }
}

async fn next(mut s: Source) -> Option<(Result<pb::ControlMessage, Status>, Source)> {
    if let Some(message) = s.first.pop_front() {
        return Some((Ok(message), s));
    }
    if s.ended {
        return None;
    }
    // Each branch takes its message only when it completes, so the ones not chosen lose
    // nothing.
    let next = tokio::select! {
        biased;
        _ = s.stop.cancelled() => Next::Stopped,
        update = s.fleet.next_update(&s.node_id, s.stream_id, &s.wake) => Next::Update(update),
        message = s.channel.recv() => Next::Channel(message.map(Box::new)),
    };
    let message = match next {
        Next::Update(update) => wire::route_update_message(update),
        Next::Channel(Some(message)) => *message,
        Next::Channel(None) => return None,
        Next::Stopped => {
            s.ended = true;
            if !s.fleet.superseded(&s.node_id, s.stream_id) {
                return None;
            }
            let status = Status::aborted("a newer stream with this node id replaced this one");
            return Some((Err(status), s));
        }
    };
    Some((Ok(message), s))
}
