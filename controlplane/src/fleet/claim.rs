//! Who holds a node id. One process at a time: a Hello for an id whose stream is live and
//! belongs to another process is refused, naming that process, so that no write is ever
//! acked for the id while another process with it routes by a cache nobody updates. The
//! same process reconnecting (its old stream not yet seen to end), or any process after
//! the holder fell silent, takes the id over. Refused processes are remembered for
//! `/nodes`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::NodeState;
use crate::error::{Error, Result};
use crate::node_info::NodeHello;

/// How long a refused process is still listed after its last attempt: it retries at
/// least every 10 s (its backoff's cap), so a minute without one means it stopped.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
/// Refused processes remembered per node id (a crash-looping duplicate gets a new
/// instance id every start).
const MAX_REFUSED: usize = 8;

/// A process refused because its node id was held by a live one.
#[derive(Debug, Clone)]
pub struct Refused {
    pub instance_id: String,
    pub address: Option<SocketAddr>,
    pub refusals: u64,
    pub last: Instant,
}

/// What a Hello finds when its node id already has an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Nobody holds the id.
    Free,
    /// The holder is this very process: its new stream replaces its old one.
    Reconnect,
    /// The holder has been silent past the silence timeout: the newcomer replaces it.
    TakeOver,
    /// Another process holds the id and is live.
    Held,
}

impl NodeState {
    pub(super) fn claim(&self, hello: &NodeHello, silence: Duration) -> Claim {
        if self.tx.is_none() {
            Claim::Free
        } else if self.hello.instance_id == hello.instance_id {
            Claim::Reconnect
        } else if self.last_seen.elapsed() > silence {
            Claim::TakeOver
        } else {
            Claim::Held
        }
    }

    /// The refusal for `hello` (remembered for `/nodes`), or `Ok` with how it may connect.
    pub(super) fn admit(&mut self, hello: &NodeHello, address: Option<SocketAddr>, silence: Duration) -> Result<Claim> {
        let claim = self.claim(hello, silence);
        if claim != Claim::Held {
            return Ok(claim);
        }
        self.remember_refusal(&hello.instance_id, address);
        let holder = self.address.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let message = format!(
            "node id {:?} is held by a live process (instance {}, connected from {holder}, last heard {:.1}s ago); \
             refusing instance {} from {}: give every node its own [node] id",
            hello.node_id,
            self.hello.instance_id,
            self.last_seen.elapsed().as_secs_f64(),
            hello.instance_id,
            address.map_or_else(|| "an unknown address".to_string(), |a| a.to_string()),
        );
        tracing::warn!(
            node = %hello.node_id,
            instance = %hello.instance_id,
            address = ?address,
            holder_instance = %self.hello.instance_id,
            holder_address = %holder,
            "node refused: its id is held by another live process"
        );
        Err(Error::NodeIdInUse(message))
    }

    fn remember_refusal(&mut self, instance_id: &str, address: Option<SocketAddr>) {
        let now = Instant::now();
        self.refused.retain(|r| now.duration_since(r.last) < REFUSAL_MEMORY);
        match self.refused.iter_mut().find(|r| r.instance_id == instance_id) {
            Some(r) => {
                r.refusals += 1;
                r.last = now;
                r.address = address;
            }
            None => {
                if self.refused.len() == MAX_REFUSED {
                    self.refused.remove(0);
                }
                let instance_id = instance_id.to_string();
                self.refused.push(Refused { instance_id, address, refusals: 1, last: now });
            }
        }
    }

    /// The processes refused recently.
    pub(super) fn recent_refusals(&self) -> Vec<Refused> {
        self.refused.iter().filter(|r| r.last.elapsed() < REFUSAL_MEMORY).cloned().collect()
    }

    /// Ends the current stream for a newer one: its pump and its messages stop, and its
    /// waiting commands see "not connected".
    pub(super) fn supersede(&mut self, claim: Claim, newcomer: &NodeHello) {
        if matches!(claim, Claim::Free | Claim::Held) {
            return;
        }
        tracing::info!(
            node = %newcomer.node_id,
            old_instance = %self.hello.instance_id,
            new_instance = %newcomer.instance_id,
            silent_s = self.last_seen.elapsed().as_secs_f64(),
            reconnect = claim == Claim::Reconnect,
            "a new stream replaces the node's previous one"
        );
        self.stop.cancel();
        self.tx = None;
        self.pending.clear();
    }
}
