//! Per-client lockout for the management API and the gRPC port: `lockout_threshold`
//! failed token attempts from one address within `lockout_window` lock it out for
//! `lockout_duration`, during which it is refused (429, `RESOURCE_EXHAUSTED`) whatever
//! token it sends.
//!
//! A success resets nothing: behind a shared NAT address an operator's good requests must
//! not hand a guesser fresh attempts. Failures simply age out with their window.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// When failures lock an address out: the `lockout_*` keys of `[api]` and `[grpc]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// Addresses tracked at once; past it the stalest entry makes room, so a spray of source
/// addresses cannot grow memory without bound.
pub const MAX_CLIENTS: usize = 10_000;

#[derive(Debug)]
pub struct Lockout {
    /// The warning logged when an address is locked out.
    warning: &'static str,
    threshold: u32,
    window: Duration,
    duration: Duration,
    capacity: usize,
    clients: Mutex<HashMap<IpAddr, ClientFailures>>,
}

#[derive(Debug, Clone, Copy)]
struct ClientFailures {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

impl Lockout {
    /// `warning` says which door and which secret, e.g. "grpc: too many failed
    /// node-token attempts; client locked out".
    pub fn new(policy: Policy, warning: &'static str) -> Self {
        Lockout::with_capacity(policy, warning, MAX_CLIENTS)
    }

    fn with_capacity(policy: Policy, warning: &'static str, capacity: usize) -> Self {
        Lockout {
            warning,
            threshold: policy.threshold.max(1),
            window: policy.window,
            duration: policy.duration,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// How much longer `ip` stays locked out, if it is.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let until = self.lock().get(&client_key(ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed attempt from `ip`; true when this one locked it out.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let key = client_key(ip);
        let locked = {
            let mut clients = self.lock();
            if !clients.contains_key(&key) && clients.len() >= self.capacity {
                self.make_room(&mut clients, now);
            }
            let fresh = ClientFailures { failures: 0, window_start: now, last_failure: now, locked_until: None };
            let entry = clients.entry(key).or_insert(fresh);
            if !self.live(entry, now) {
                *entry = fresh;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            let locks = entry.failures >= self.threshold && entry.locked_until.is_none();
            if locks {
                entry.locked_until = Some(now + self.duration);
            }
            locks
        };
        if locked {
            tracing::warn!(
                client = %ip,
                failures = self.threshold,
                window = ?self.window,
                lockout = ?self.duration,
                "{}",
                self.warning
            );
        }
        locked
    }

    /// Whether an entry still matters: locked, or inside its counting window.
    fn live(&self, entry: &ClientFailures, now: Instant) -> bool {
        match entry.locked_until {
            Some(until) => until > now,
            None => now.duration_since(entry.window_start) < self.window,
        }
    }

    /// Drops expired entries; if none were, the stalest unlocked one (a locked one only
    /// when every entry is locked).
    fn make_room(&self, clients: &mut HashMap<IpAddr, ClientFailures>, now: Instant) {
        clients.retain(|_, e| self.live(e, now));
        if clients.len() < self.capacity {
            return;
        }
        let stalest = clients.iter().min_by_key(|(_, e)| (e.locked_until.is_some(), e.last_failure)).map(|(k, _)| *k);
        if let Some(key) = stalest {
            clients.remove(&key);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, ClientFailures>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// The counting key: IPv4 (also when mapped into IPv6) per address, IPv6 per /64, since
/// one host commonly holds a whole /64 and could otherwise rotate through fresh counters.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(threshold: u32, capacity: usize) -> Lockout {
        let policy = Policy { threshold, window: Duration::from_secs(60), duration: Duration::from_secs(300) };
        Lockout::with_capacity(policy, "test: locked out", capacity)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn failures_lock_out_at_the_threshold_until_the_duration_passes() {
        let l = lockout(3, 100);
        let a = ip("192.0.2.1");
        assert!(!l.record_failure(a) && !l.record_failure(a));
        assert_eq!(l.locked(a), None);
        assert!(l.record_failure(a), "the third failure locks");
        assert_eq!(l.locked(a), Some(Duration::from_secs(300)));
        assert!(!l.record_failure(a), "a locked client is not locked again");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(l.locked(a), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.locked(a), None);
        assert!(!l.record_failure(a), "the count starts over after a lockout");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_age_out_with_their_window() {
        let l = lockout(3, 100);
        let a = ip("192.0.2.1");
        l.record_failure(a);
        l.record_failure(a);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!l.record_failure(a), "a new window, one failure");
        assert!(!l.record_failure(a));
        assert!(l.record_failure(a));
    }

    #[tokio::test(start_paused = true)]
    async fn mapped_ipv4_is_one_client_and_ipv6_counts_per_64() {
        let l = lockout(2, 100);
        l.record_failure(ip("192.0.2.7"));
        assert!(l.record_failure(ip("::ffff:192.0.2.7")));
        l.record_failure(ip("2001:db8:1:2::1"));
        assert!(l.record_failure(ip("2001:db8:1:2:ffff::9")));
        assert!(l.locked(ip("2001:db8:1:2::abcd")).is_some());
        assert_eq!(l.locked(ip("2001:db8:1:3::1")), None);
        assert_eq!(l.locked(ip("192.0.2.8")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_capped_and_keeps_locked_clients_longest() {
        let l = lockout(2, 3);
        let locked = ip("10.0.0.1");
        l.record_failure(locked);
        l.record_failure(locked);
        for i in 2..50 {
            tokio::time::advance(Duration::from_millis(1)).await;
            l.record_failure(ip(&format!("10.0.0.{i}")));
            assert!(l.tracked() <= 3);
        }
        assert!(l.locked(locked).is_some(), "a spray of addresses does not free a locked one");
        tokio::time::advance(Duration::from_secs(400)).await;
        l.record_failure(ip("10.0.1.1"));
        assert_eq!(l.tracked(), 1, "expired entries go first");
    }
}

/// The lockout through the router, with `oneshot` and a `ConnectInfo` per request.
#[cfg(test)]
mod router_tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    use crate::config::Config;
    use crate::state::Shared;
    use crate::store::Store;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-lockout";

    /// Locks out after 3 failures within a minute, for 5 minutes.
    async fn app() -> (axum::Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[api]\nlockout_threshold = 3\n[routing]\ndefault_destination = \"legacy\"\n[mapping.sqlite]\npath = {:?}\n\
             [destination.legacy]\nhost = \"127.0.0.1\"\n[destination.legacy.protocol.imap]\nport = 143\n",
            dir.path().join("m.db").display().to_string()
        );
        let config = Config::from_toml_str(&toml).unwrap();
        let store = Store::open(&config.mapping, &config.route_key_rule()).await.unwrap();
        (crate::api::router(Shared::new(config, store), TOKEN.into()), dir)
    }

    /// Status and `Retry-After` of `GET path` from `client` (an IP address).
    async fn get(app: &axum::Router, path: &str, token: Option<&str>, client: &str) -> (StatusCode, Option<u64>) {
        let mut req = Request::builder().uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        let peer = SocketAddr::new(client.parse().unwrap(), 40000);
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = app.clone().oneshot(req).await.unwrap();
        let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().parse().unwrap());
        (resp.status(), retry)
    }

    #[tokio::test]
    async fn failures_turn_into_429_for_that_address_only() {
        let (app, _dir) = app().await;
        let attacker = "198.51.100.7";
        for token in [None, Some("wrong"), Some(&TOKEN[1..])] {
            assert_eq!(get(&app, "/stats", token, attacker).await, (StatusCode::UNAUTHORIZED, None));
        }
        assert_eq!(get(&app, "/stats", Some("wrong"), attacker).await, (StatusCode::TOO_MANY_REQUESTS, Some(300)));
        let (code, retry) = get(&app, "/nodes", Some(TOKEN), attacker).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "the right token does not help while locked out");
        assert!(matches!(retry, Some(1..=300)), "{retry:?}");

        assert_eq!(get(&app, "/healthz", None, attacker).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/readyz", None, attacker).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/stats", Some(TOKEN), "198.51.100.8").await.0, StatusCode::OK, "another address");
        assert_eq!(get(&app, "/stats", None, "198.51.100.8").await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_success_does_not_reset_anyone() {
        let (app, _dir) = app().await;
        let shared_nat = "203.0.113.5";
        for _ in 0..2 {
            assert_eq!(get(&app, "/stats", Some("guess"), shared_nat).await.0, StatusCode::UNAUTHORIZED);
            assert_eq!(get(&app, "/stats", Some(TOKEN), shared_nat).await.0, StatusCode::OK);
            assert_eq!(get(&app, "/stats", Some(TOKEN), "203.0.113.6").await.0, StatusCode::OK);
        }
        assert_eq!(get(&app, "/stats", Some("guess"), shared_nat).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&app, "/stats", Some(TOKEN), shared_nat).await.0, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn the_lockout_ends_after_its_duration() {
        let (app, _dir) = app().await;
        // Paused only now: the store is open, nothing below waits on its worker thread.
        tokio::time::pause();
        let client = "2001:db8::7";
        for _ in 0..3 {
            get(&app, "/stats", None, client).await;
        }
        assert_eq!(get(&app, "/stats", Some(TOKEN), client).await, (StatusCode::TOO_MANY_REQUESTS, Some(300)));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(get(&app, "/stats", Some(TOKEN), client).await, (StatusCode::TOO_MANY_REQUESTS, Some(180)));
        assert_eq!(get(&app, "/healthz", None, client).await.0, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(180)).await;
        assert_eq!(get(&app, "/stats", Some(TOKEN), client).await.0, StatusCode::OK);
        for _ in 0..2 {
            assert_eq!(get(&app, "/stats", None, client).await.0, StatusCode::UNAUTHORIZED, "counting starts over");
        }
    }
}
