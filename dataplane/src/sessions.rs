//! Live client sessions on this node: counters for reports, and handles to kick them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::Protocol;

/// Counters and live sessions of this node instance (cumulative since start).
#[derive(Debug, Default)]
pub struct Sessions {
    active: Mutex<HashMap<Protocol, u64>>,
    by_key: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next_id: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub total: AtomicU64,
}

/// Counts one client connection for as long as it lives.
pub struct ConnectionGuard {
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

/// Registers an authenticated session under its route key so it can be kicked.
pub struct KickHandle {
    sessions: Arc<Sessions>,
    key: String,
    id: u64,
    pub token: CancellationToken,
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
    pub fn connection(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.active.lock().unwrap_or_else(|e| e.into_inner()).entry(protocol).or_default() += 1;
        ConnectionGuard { sessions: Arc::clone(self), protocol }
    }

    pub fn register(self: &Arc<Self>, key: &str, parent: &CancellationToken) -> KickHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = parent.child_token();
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .insert(id, token.clone());
        KickHandle { sessions: Arc::clone(self), key: key.to_string(), id, token }
    }

    /// Closes every live session of `key`; returns how many.
    pub fn kick(&self, key: &str) -> u64 {
        let live = self.by_key.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        let live = live.unwrap_or_default();
        live.values().for_each(CancellationToken::cancel);
        live.len() as u64
    }

    pub fn active(&self) -> HashMap<Protocol, u64> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn active_total(&self) -> u64 {
        self.active().values().sum()
    }

    pub fn add_bytes(&self, from_client: u64, to_client: u64) {
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
        assert_eq!(s.kick("alice"), 2);
        assert!(a1.token.is_cancelled() && a2.token.is_cancelled());
        assert!(!b.token.is_cancelled());
        assert_eq!(s.kick("alice"), 0);
        drop(b);
        assert_eq!(s.kick("bob"), 0);
    }
}
