//! The state one data-plane node shares between its listeners and its control link.
//!
//! Fleet settings arrive as one immutable snapshot (watch channel); the route cache is
//! rebuilt only when the pushed cache settings change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breakers;
use crate::route::{CacheStats, Resolver, RouteCache};
use crate::sessions::Sessions;
use crate::settings::{BreakerSettings, FleetSettings};

/// One data-plane node: its identity, the current fleet settings and the route cache built
/// from them, the destinations' breakers, the live sessions (for kicks and shutdown), login
/// delays, and its standing with the control plane (connected, last revision applied,
/// refused). Every listener and the control link hold the same `Arc<Node>`.
pub(crate) struct Node {
    pub id: String,
    pub instance_id: String,
    settings: watch::Sender<Option<Arc<FleetSettings>>>,
    routes: RwLock<Option<Arc<RouteCache>>>,
    resolver: Arc<dyn Resolver>,
    pub breakers: Breakers,
    pub sessions: Arc<Sessions>,
    delays: Mutex<HashMap<String, Instant>>,
    delay_changed: Notify,
    revision: Mutex<(String, u64)>,
    pub connected: AtomicBool,
    pub synced_once: AtomicBool,
    /// Why the control plane refused this process (another live one holds its node id).
    refused: Mutex<Option<String>>,
    /// Stops the node's background work (listeners, control link) on shutdown.
    pub shutdown: CancellationToken,
    /// Closes every bridged session: cancelled once the shutdown grace period is over.
    pub kill_sessions: CancellationToken,
    /// This node's own listener addresses, to refuse destinations that point back at it.
    own: std::sync::OnceLock<Vec<SocketAddr>>,
}

impl Node {
    pub(crate) fn new(id: String, resolver: Arc<dyn Resolver>, shutdown: CancellationToken) -> Arc<Self> {
        let (settings, _) = watch::channel(None);
        Arc::new(Self {
            id,
            instance_id: uuid::Uuid::new_v4().to_string(),
            settings,
            routes: RwLock::new(None),
            resolver,
            // Only until the first Welcome: no session is routed before fleet settings arrive,
            // and applying them reconfigures every breaker.
            breakers: Breakers::new(BreakerSettings::default()),
            sessions: Arc::new(Sessions::default()),
            delays: Mutex::default(),
            delay_changed: Notify::new(),
            revision: Mutex::new((String::new(), 0)),
            connected: AtomicBool::new(false),
            synced_once: AtomicBool::new(false),
            refused: Mutex::new(None),
            shutdown,
            kill_sessions: CancellationToken::new(),
            own: std::sync::OnceLock::new(),
        })
    }

    /// The current fleet settings; `None` until the first Welcome.
    pub(crate) fn settings(&self) -> Option<Arc<FleetSettings>> {
        self.settings.borrow().clone()
    }

    pub(crate) fn routes(&self) -> Option<Arc<RouteCache>> {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the listener addresses once they are bound.
    pub(crate) fn set_own_listeners(&self, addrs: Vec<SocketAddr>) {
        let _ = self.own.set(addrs);
    }

    /// Would connecting to `host:port` reach one of this node's own listeners (a loop)?
    pub(crate) fn is_own_listener(&self, host: &str, port: u16) -> bool {
        let Ok(ip) = host.parse::<IpAddr>() else { return false };
        self.own.get().is_some_and(|own| {
            own.iter().any(|addr| {
                addr.port() == port
                    && (addr.ip() == ip || (addr.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
            })
        })
    }

    /// Swaps in a new settings snapshot; rebuilds the route cache if its settings changed.
    pub(crate) fn apply_settings(&self, settings: FleetSettings) {
        for dest in settings.destinations.values() {
            for (protocol, endpoint) in &dest.endpoints {
                if self.is_own_listener(&dest.host, endpoint.port) {
                    tracing::error!(destination = %dest.id, %protocol, port = endpoint.port, "destination endpoint is this node's own listener: refused (routing loop)");
                }
            }
        }
        self.breakers.configure(settings.breaker);
        {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            let unchanged = routes.as_ref().is_some_and(|r| r.settings() == settings.cache);
            if !unchanged {
                let fresh = RouteCache::new(settings.cache, Arc::clone(&self.resolver));
                if let Some(old) = routes.as_ref() {
                    fresh.carry_counters(old);
                }
                *routes = Some(fresh);
            }
        }
        self.settings.send_replace(Some(Arc::new(settings)));
    }

    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.routes().map(|r| r.stats()).unwrap_or_default()
    }

    /// The control-plane epoch and revision this node has applied.
    pub(crate) fn revision(&self) -> (String, u64) {
        self.revision.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_revision(&self, epoch: &str, revision: u64) {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = (epoch.to_string(), revision);
    }

    /// Holds new logins of `key` for `seconds` (0 releases).
    pub(crate) fn delay(&self, key: &str, seconds: u64) {
        let mut delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        if seconds == 0 {
            delays.remove(key);
        } else {
            delays.insert(key.to_string(), Instant::now() + Duration::from_secs(seconds));
        }
        drop(delays);
        self.delay_changed.notify_waiters();
    }

    /// Waits out a pending login delay for `key`; returns early once it is released.
    pub(crate) async fn honour_delay(&self, key: &str) {
        loop {
            // Registered before the check so a release between check and wait is not missed.
            let released = self.delay_changed.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let until = {
                let mut delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
                match delays.get(key) {
                    Some(until) if *until > Instant::now() => *until,
                    Some(_) => {
                        delays.remove(key);
                        return;
                    }
                    None => return,
                }
            };
            // Re-check every 100 ms so a release takes effect promptly.
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = released => {}
            }
        }
    }

    /// Ready: synced with a control plane at least once, holding settings, and not
    /// refused.
    pub(crate) fn ready(&self) -> bool {
        self.synced_once.load(Ordering::Acquire) && self.settings().is_some() && self.refused().is_none()
    }

    /// The control plane refused this process because another live one holds its node id:
    /// route updates go to that one now, so the cached routes are dropped rather than
    /// served stale (misses fail as temporary while the control plane is not connected).
    pub(crate) fn refuse(&self, reason: &str) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        if let Some(routes) = self.routes() {
            routes.clear();
        }
    }

    /// The control plane took this process's stream.
    pub(crate) fn accepted(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why the control plane refused this process, while it does.
    pub(crate) fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Resolved, RouteError};
    use futures::future::BoxFuture;

    struct Nowhere;

    impl Resolver for Nowhere {
        fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
            Box::pin(async { Err(RouteError::Unavailable("test".into())) })
        }
    }

    #[test]
    fn a_destination_pointing_at_an_own_listener_is_a_loop() {
        let node = Node::new("n".into(), Arc::new(Nowhere), CancellationToken::new());
        assert!(!node.is_own_listener("127.0.0.1", 1143), "unknown until the listeners are bound");
        node.set_own_listeners(vec!["0.0.0.0:1143".parse().unwrap(), "192.0.2.5:993".parse().unwrap()]);
        assert!(node.is_own_listener("127.0.0.1", 1143), "a wildcard listener answers on loopback");
        assert!(node.is_own_listener("192.0.2.5", 993));
        assert!(!node.is_own_listener("192.0.2.6", 993));
        assert!(!node.is_own_listener("127.0.0.1", 143));
        assert!(!node.is_own_listener("mail.example.test", 1143), "names are not resolved here");
    }

    #[tokio::test]
    async fn a_refused_process_drops_its_routes_and_is_not_ready_until_accepted() {
        let node = Node::new("n".into(), Arc::new(Nowhere), CancellationToken::new());
        let settings = crate::settings::FleetSettings::try_from(crate::settings::tests::sample()).unwrap();
        node.apply_settings(settings);
        node.synced_once.store(true, Ordering::Release);
        let routes = node.routes().unwrap();
        routes.upsert("alice", "new");
        routes.sync();
        assert!(node.ready());
        node.refuse("node id \"n\" is held by a live process");
        assert!(!node.ready());
        assert_eq!(node.refused().as_deref(), Some("node id \"n\" is held by a live process"));
        routes.sync();
        assert_eq!(node.cache_stats().entries, 0, "routes nobody updates any more are not served");
        node.accepted();
        assert!(node.ready());
    }
}
