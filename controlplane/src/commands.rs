//! Commands sent recently, kept until they expire so that a node which was disconnected
//! (or reconnects before acking) still gets them when it comes back.
//!
//! Login delays are state, not events: the latest delay command for an account supersedes
//! the earlier ones, and a release (`seconds = 0`) is kept as long as a delay it ends could
//! still hold logins on a node that missed it.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::node_info::{CommandKind, NodeCommand};

/// How long a breaker reset, invalidation or kick stays worth replaying.
pub const COMMAND_TTL: Duration = Duration::from_secs(300);
/// Bound on remembered commands; the oldest go first.
const CAPACITY: usize = 4096;

#[derive(Debug)]
struct Logged {
    id: String,
    kind: CommandKind,
    only: Option<String>,
    /// Replayed until then.
    expires: Instant,
    /// A delay's end (the moment it was given, for a release): a replay carries what is left.
    ends: Option<Instant>,
    acked: HashSet<String>,
}

#[derive(Debug, Default)]
pub struct CommandLog {
    entries: Mutex<VecDeque<Logged>>,
}

impl CommandLog {
    /// Remembers a command. A delay supersedes the account's earlier delays and lives as long
    /// as the longest of them or itself, so a release reaches every node still held.
    pub fn record(&self, id: &str, kind: &CommandKind, only: Option<&str>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, ends) = match kind {
            // A probe is a question for now, not an instruction to replay.
            CommandKind::Probe => return,
            CommandKind::Delay { key, seconds } => {
                let ends = now + Duration::from_secs(*seconds);
                let outlived = supersede_delays(&mut entries, key, only);
                (outlived.map_or(ends, |o| o.max(ends)), Some(ends))
            }
            _ => (now + COMMAND_TTL, None),
        };
        if expires <= now {
            // A release of a delay no node can still hold: nothing to replay.
            return;
        }
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(Logged {
            id: id.to_string(),
            kind: kind.clone(),
            only: only.map(str::to_string),
            expires,
            ends,
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
    pub fn pending_for(&self, node_id: &str) -> Vec<NodeCommand> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.expires > now);
        entries
            .iter()
            .filter(|e| !e.acked.contains(node_id) && e.only.as_deref().is_none_or(|o| o == node_id))
            .map(|e| {
                let kind = match (&e.kind, e.ends) {
                    (CommandKind::Delay { key, .. }, Some(ends)) => CommandKind::Delay {
                        key: key.clone(),
                        seconds: whole_seconds(ends.saturating_duration_since(now)),
                    },
                    (other, _) => other.clone(),
                };
                NodeCommand { id: e.id.clone(), kind }
            })
            .collect()
    }
}

/// Drops the delays of `key` that a delay aimed at `only` replaces (a fleet-wide one replaces
/// every target's); returns how long the longest delay of `key` it ends on those nodes was to
/// be replayed (a release for one node also ends a fleet-wide delay there).
fn supersede_delays(entries: &mut VecDeque<Logged>, key: &str, only: Option<&str>) -> Option<Instant> {
    let mut outlived = None;
    entries.retain(|e| {
        if !matches!(&e.kind, CommandKind::Delay { key: k, .. } if k == key) {
            return true;
        }
        let same_target = only.is_none() || e.only.as_deref() == only;
        if same_target || e.only.is_none() {
            outlived = outlived.max(Some(e.expires));
        }
        !same_target
    });
    outlived
}

/// Seconds rounded up, so a delay with 300 ms left is not replayed as a release.
fn whole_seconds(left: Duration) -> u64 {
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(dest: &str) -> CommandKind {
        CommandKind::BreakerReset { destination: dest.into() }
    }

    #[tokio::test(start_paused = true)]
    async fn replays_unacked_unexpired_commands_to_their_targets() {
        let log = CommandLog::default();
        log.record("c1", &reset("new"), None);
        log.record("c2", &reset(""), Some("dp-2"));
        log.record("p", &CommandKind::Probe, None);
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
        log.record("d", &delay("alice", 60), None);
        tokio::time::advance(Duration::from_secs(45)).await;
        let pending = log.pending_for("dp-1");
        let CommandKind::Delay { seconds, .. } = &pending[0].kind else { panic!("{pending:?}") };
        assert_eq!(*seconds, 15);
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(log.pending_for("dp-1").is_empty());
    }

    fn delay(key: &str, seconds: u64) -> CommandKind {
        CommandKind::Delay { key: key.into(), seconds }
    }

    /// (id, seconds) of every delay `node` would be replayed.
    fn delays_for(log: &CommandLog, node: &str) -> Vec<(String, u64)> {
        let delays = log.pending_for(node).into_iter().filter_map(|c| match c.kind {
            CommandKind::Delay { seconds, .. } => Some((c.id, seconds)),
            _ => None,
        });
        delays.collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_replaces_the_delay_and_is_replayed_while_the_delay_could_hold() {
        let log = CommandLog::default();
        log.record("d", &delay("alice", 60), None);
        log.record("b", &delay("bob", 60), None);
        log.acked("d", "dp-1");
        tokio::time::advance(Duration::from_secs(10)).await;
        log.record("r", &delay("alice", 0), None);
        assert_eq!(delays_for(&log, "dp-1"), [("b".into(), 50), ("r".into(), 0)], "bob's delay is untouched");
        assert_eq!(delays_for(&log, "dp-2"), [("b".into(), 50), ("r".into(), 0)], "never the superseded delay");
        tokio::time::advance(Duration::from_secs(49)).await;
        assert_eq!(delays_for(&log, "dp-1"), [("b".into(), 1), ("r".into(), 0)], "the 60 s are not over yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(delays_for(&log, "dp-1").is_empty(), "no node can still hold alice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_with_no_delay_to_end_is_not_kept_and_a_shorter_delay_ends_a_longer_one() {
        let log = CommandLog::default();
        log.record("r", &delay("alice", 0), None);
        assert!(delays_for(&log, "dp-1").is_empty());
        log.record("long", &delay("alice", 300), None);
        log.record("short", &delay("alice", 5), None);
        assert_eq!(delays_for(&log, "dp-1"), [("short".into(), 5)]);
        tokio::time::advance(Duration::from_millis(5300)).await;
        // Past its own end the short delay is still replayed, as a release: a node that got
        // only the long one must not keep it.
        assert_eq!(delays_for(&log, "dp-1"), [("short".into(), 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_for_one_node_leaves_the_fleet_wide_delay_for_the_others() {
        let log = CommandLog::default();
        log.record("d", &delay("alice", 60), None);
        log.record("r", &delay("alice", 0), Some("dp-2"));
        assert_eq!(delays_for(&log, "dp-1"), [("d".into(), 60)]);
        assert_eq!(delays_for(&log, "dp-2"), [("d".into(), 60), ("r".into(), 0)]);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(delays_for(&log, "dp-1"), [("d".into(), 59)], "rounded up, never a release early");
    }
}
