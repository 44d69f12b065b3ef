//! Live client sessions on this node: counters for reports, and handles to kick them.
//!
//! A login registers its account before it looks the route up and keeps the registration
//! while it connects, authenticates and is bridged, so a kick reaches a session that is
//! still opening at the old server as well as one already bridged; and a kick knows when
//! every session it closed is gone (each registration signals its end when dropped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Protocol;

/// Counters and live sessions of this node instance (cumulative since start).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    active: Mutex<HashMap<Protocol, u64>>,
    by_key: Mutex<HashMap<String, HashMap<u64, Live>>>,
    next_id: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub total: AtomicU64,
}

/// Counts one client connection for as long as it lives.
pub(crate) struct ConnectionGuard {
    sessions: Arc<Sessions>,
    protocol: Protocol,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut active = self.sessions.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = active.get_mut(&self.protocol) {
            *n = n.saturating_sub(1);
        }
    }
}

/// One registered session as a kick sees it.
#[derive(Debug)]
struct Live {
    token: CancellationToken,
    /// Resolves (with an error) once the session's [`KickHandle`] is dropped.
    ended: oneshot::Receiver<()>,
}

/// Registers a session (opening or bridged) under its route key so it can be kicked.
#[derive(Debug)]
pub(crate) struct KickHandle {
    sessions: Arc<Sessions>,
    key: String,
    id: u64,
    pub token: CancellationToken,
    /// Dropped with the handle: tells a kick this session is gone.
    _ended: oneshot::Sender<()>,
}

/// The sessions one kick closed.
#[derive(Debug)]
pub(crate) struct Kicked {
    pub count: u64,
    ended: Vec<oneshot::Receiver<()>>,
}

impl Kicked {
    /// Whether every kicked session ended (its connections closed) within `wait`.
    pub(crate) async fn ended_within(self, wait: Duration) -> bool {
        let all = futures::future::join_all(self.ended);
        tokio::time::timeout(wait, all).await.is_ok()
    }
}

impl Drop for KickHandle {
    fn drop(&mut self) {
        let mut by_key = self.sessions.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = by_key.get_mut(&self.key) {
            live.remove(&self.id);
            if live.is_empty() {
                by_key.remove(&self.key);
            }
        }
    }
}

impl Sessions {
    pub(crate) fn connection(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.active.lock().unwrap_or_else(|e| e.into_inner()).entry(protocol).or_default() += 1;
        ConnectionGuard { sessions: Arc::clone(self), protocol }
    }

    pub(crate) fn register(self: &Arc<Self>, key: &str, parent: &CancellationToken) -> KickHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = parent.child_token();
        let (ended_tx, ended) = oneshot::channel();
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .insert(id, Live { token: token.clone(), ended });
        KickHandle { sessions: Arc::clone(self), key: key.to_string(), id, token, _ended: ended_tx }
    }

    /// Closes every session of `key`, opening or bridged; [`Kicked::ended_within`] waits
    /// until they are gone.
    pub(crate) fn kick(&self, key: &str) -> Kicked {
        let live = self.by_key.lock().unwrap_or_else(|e| e.into_inner()).remove(key).unwrap_or_default();
        let count = live.len() as u64;
        let ended = live
            .into_values()
            .map(|l| {
                l.token.cancel();
                l.ended
            })
            .collect();
        Kicked { count, ended }
    }

    pub(crate) fn active(&self) -> HashMap<Protocol, u64> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn active_total(&self) -> u64 {
        self.active().values().sum()
    }

    pub(crate) fn add_bytes(&self, from_client: u64, to_client: u64) {
        self.bytes_from_clients.fetch_add(from_client, Ordering::Relaxed);
        self.bytes_to_clients.fetch_add(to_client, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_while_they_live() {
        let s = Arc::new(Sessions::default());
        let a = s.connection(Protocol::Imap);
        let b = s.connection(Protocol::Imap);
        assert_eq!(s.active_total(), 2);
        drop(a);
        assert_eq!(s.active()[&Protocol::Imap], 1);
        drop(b);
        assert_eq!(s.active_total(), 0);
        assert_eq!(s.total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn kick_cancels_only_that_keys_sessions() {
        let s = Arc::new(Sessions::default());
        let root = CancellationToken::new();
        let a1 = s.register("alice", &root);
        let a2 = s.register("alice", &root);
        let b = s.register("bob", &root);
        assert_eq!(s.kick("alice").count, 2);
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b.token.is_cancelled());
        assert_eq!(s.kick("alice").count, 0);
        drop(b);
        assert_eq!(s.kick("bob").count, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_knows_when_every_session_it_closed_is_gone() {
        let s = Arc::new(Sessions::default());
        let root = CancellationToken::new();
        let (a1, a2) = (s.register("alice", &root), s.register("alice", &root));
        drop(a1);
        let kicked = s.kick("alice");
        assert_eq!(kicked.count, 1);
        let waiting = tokio::spawn(kicked.ended_within(Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a2 still holds its registration");
        drop(a2);
        assert!(waiting.await.unwrap());
        let stuck = s.register("alice", &root);
        assert!(!s.kick("alice").ended_within(Duration::from_secs(2)).await, "a session that never ends");
        drop(stuck);
    }
}
