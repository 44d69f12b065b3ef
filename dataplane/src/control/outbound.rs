//! What the node has to tell the control plane, held until its Session stream takes it.
//! Queuing never waits, so a control plane that stops reading cannot block the loop that
//! watches for its silence. The latest revision ack, report and heartbeat replace older
//! ones (each says everything the one before did); command acks queue, up to a bound past
//! which the control plane is plainly not reading and the session is given up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::Stream;
use switchyard_proto::v1 as pb;
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// Command acks the control plane may leave untaken before the session is given up (it
/// replays unacked commands on the next one).
pub(super) const MAX_UNSENT_ACKS: usize = 4096;

#[derive(Default)]
struct Pending {
    hello: Option<pb::Hello>,
    revision: Option<pb::RevisionAck>,
    acks: VecDeque<pb::CommandAck>,
    report: Option<pb::Report>,
    heartbeat: Option<pb::Heartbeat>,
    closed: bool,
}

/// The node's side of one Session stream.
#[derive(Default)]
pub(super) struct Outbound {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Outbound {
    pub(super) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Queues one message for the stream; `Err` when the control plane has left too many
    /// command acks untaken.
    pub(super) fn queue(&self, kind: pb::node_message::Kind) -> Result<()> {
        use pb::node_message::Kind;
        {
            let mut pending = self.lock();
            match kind {
                Kind::Hello(hello) => pending.hello = Some(hello),
                Kind::RevisionAck(ack) => pending.revision = Some(ack),
                Kind::Report(report) => pending.report = Some(report),
                Kind::Heartbeat(beat) => pending.heartbeat = Some(beat),
                Kind::CommandAck(ack) => {
                    if pending.acks.len() >= MAX_UNSENT_ACKS {
                        return Err(Error::Control(format!(
                            "the control plane has not taken this node's last {MAX_UNSENT_ACKS} command acks"
                        )));
                    }
                    pending.acks.push_back(ack);
                }
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Ends the stream: the session is over, whatever is still queued is dropped.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The messages as the stream takes them: the Hello first, then the revision ack,
    /// command acks, the report and the heartbeat.
    pub(super) fn stream(self: &Arc<Self>) -> impl Stream<Item = pb::NodeMessage> + Send + 'static {
        futures::stream::unfold(Arc::clone(self), |out| async move {
            loop {
                match out.take() {
                    Taken::Message(kind) => return Some((pb::NodeMessage { kind: Some(kind) }, out)),
                    Taken::Closed => return None,
                    // A queue between the take and here left a permit: no wakeup is lost.
                    Taken::Nothing => out.ready.notified().await,
                }
            }
        })
    }

    fn take(&self) -> Taken {
        use pb::node_message::Kind;
        let mut pending = self.lock();
        if pending.closed {
            return Taken::Closed;
        }
        let kind = (pending.hello.take().map(Kind::Hello))
            .or_else(|| pending.revision.take().map(Kind::RevisionAck))
            .or_else(|| pending.acks.pop_front().map(Kind::CommandAck))
            .or_else(|| pending.report.take().map(Kind::Report))
            .or_else(|| pending.heartbeat.take().map(Kind::Heartbeat));
        kind.map_or(Taken::Nothing, Taken::Message)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Taken {
    Message(pb::node_message::Kind),
    Nothing,
    Closed,
}
