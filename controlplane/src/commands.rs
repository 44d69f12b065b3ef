//! Commands sent recently, kept until they expire so that a node which was disconnected
//! (or reconnects before acking) still gets them when it comes back.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use switchyard_proto::v1 as pb;
use tokio::time::Instant;

/// How long a breaker reset, invalidation or kick stays worth replaying.
pub const COMMAND_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered commands; the oldest go first.
const CAPACITY: usize = 4096;

struct Logged {
    id: String,
    kind: pb::command::Kind,
    only: Option<String>,
    expires: Instant,
    acked: HashSet<String>,
}

#[derive(Default)]
pub struct CommandLog {
    entries: Mutex<VecDeque<Logged>>,
}

impl CommandLog {
    /// Remembers a command; a delay lives as long as the delay itself.
    pub fn record(&self, id: &str, kind: &pb::command::Kind, only: Option<&str>) {
        let ttl = match kind {
            pb::command::Kind::Delay(d) => Duration::from_secs(d.seconds),
            // A probe is a question for now, not an instruction to replay.
            pb::command::Kind::Probe(_) => return,
            _ => COMMAND_TTL,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(Logged {
            id: id.to_string(),
            kind: kind.clone(),
            only: only.map(str::to_string),
            expires: Instant::now() + ttl,
            acked: HashSet::new(),
        });
    }

    pub fn acked(&self, id: &str, node_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.iter_mut().find(|e| e.id == id) {
            entry.acked.insert(node_id.to_string());
        }
    }

    /// The unexpired commands aimed at `node_id` that it has not acked, oldest first. A
    /// delay is re-aimed at its remaining time so a replay does not extend it.
    pub fn pending_for(&self, node_id: &str) -> Vec<pb::Command> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.expires > now);
        entries
            .iter()
            .filter(|e| !e.acked.contains(node_id) && e.only.as_deref().is_none_or(|o| o == node_id))
            .map(|e| {
                let kind = match &e.kind {
                    pb::command::Kind::Delay(d) => pb::command::Kind::Delay(pb::Delay {
                        key: d.key.clone(),
                        seconds: e.expires.saturating_duration_since(now).as_secs().max(1),
                    }),
                    other => other.clone(),
                };
                pb::Command { id: e.id.clone(), kind: Some(kind) }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(dest: &str) -> pb::command::Kind {
        pb::command::Kind::BreakerReset(pb::BreakerReset { destination: dest.into() })
    }

    #[tokio::test(start_paused = true)]
    async fn replays_unacked_unexpired_commands_to_their_targets() {
        let log = CommandLog::default();
        log.record("c1", &reset("new"), None);
        log.record("c2", &reset(""), Some("dp-2"));
        log.record("p", &pb::command::Kind::Probe(pb::Probe {}), None);
        log.acked("c1", "dp-1");
        assert!(log.pending_for("dp-1").is_empty(), "dp-1 acked c1; c2 is for dp-2; probes are not kept");
        let ids: Vec<_> = log.pending_for("dp-2").into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["c1", "c2"]);
        tokio::time::advance(COMMAND_TTL + Duration::from_secs(1)).await;
        assert!(log.pending_for("dp-2").is_empty(), "expired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_delay_keeps_only_its_remaining_time() {
        let log = CommandLog::default();
        log.record("d", &pb::command::Kind::Delay(pb::Delay { key: "alice".into(), seconds: 60 }), None);
        tokio::time::advance(Duration::from_secs(45)).await;
        let pending = log.pending_for("dp-1");
        let Some(pb::command::Kind::Delay(d)) = &pending[0].kind else { panic!("{pending:?}") };
        assert_eq!(d.seconds, 15);
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(log.pending_for("dp-1").is_empty());
    }
}
