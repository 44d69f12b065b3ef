//! The per-destination circuit breaker: Closed → Open{until} → HalfOpen{one probe}.
//!
//! Only the backend's failures count: to establish a session (connect errors, timeouts, a
//! backend that closes before its greeting, a failed TLS upgrade) and to answer a replayed
//! credential within `login_timeout`. An authentication failure is the backend working as
//! intended. Time comes from `tokio::time` so tests run with paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::settings::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    threshold: u32,
    cooldown: std::time::Duration,
}

/// A breaker for one destination on this node.
#[derive(Debug)]
pub(crate) struct Breaker {
    inner: Mutex<Inner>,
    /// Woken on every open/close transition so the node reports it at once.
    transitions: Arc<Notify>,
}

/// The destination is down: the caller answers with the protocol's temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejected;

/// Admission to try one connection. A probe permit that is dropped without an outcome
/// (the client went away) lets the next caller probe instead.
#[derive(Debug)]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breaker.on_success();
    }

    pub(crate) fn failure(mut self) {
        self.settled = true;
        self.breaker.on_failure();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut inner = self.breaker.lock();
            if inner.state == (State::HalfOpen { probing: true }) {
                inner.state = State::HalfOpen { probing: false };
            }
        }
    }
}

/// Health as reported to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    pub consecutive_failures: u32,
    pub down: bool,
}

impl Breaker {
    pub(crate) fn new(settings: &BreakerSettings, transitions: Arc<Notify>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                threshold: settings.failure_threshold.max(1),
                cooldown: settings.cooldown,
            }),
            transitions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned breaker lock only means a panic elsewhere; its state is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to try one backend connection.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open { until } if Instant::now() < until => return Err(Rejected),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => return Err(Rejected),
        };
        Ok(Permit { breaker: Arc::clone(self), probe, settled: false })
    }

    fn on_success(&self) {
        let was_open = {
            let mut inner = self.lock();
            let was_open = inner.state != State::Closed;
            inner.state = State::Closed;
            inner.consecutive_failures = 0;
            was_open
        };
        if was_open {
            self.transitions.notify_one();
        }
    }

    fn on_failure(&self) {
        let opened = {
            let mut inner = self.lock();
            inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
            let trips = match inner.state {
                State::Closed => inner.consecutive_failures >= inner.threshold,
                // The one probe failed: straight back to open for another cooldown.
                State::HalfOpen { .. } => true,
                State::Open { .. } => false,
            };
            if trips {
                inner.state = State::Open { until: Instant::now() + inner.cooldown };
            }
            trips
        };
        if opened {
            self.transitions.notify_one();
        }
    }

    /// Closes the breaker at once (operator reset). Returns whether it was down.
    pub(crate) fn reset(&self) -> bool {
        let was_down = {
            let mut inner = self.lock();
            let was_down = inner.state != State::Closed;
            inner.state = State::Closed;
            inner.consecutive_failures = 0;
            was_down
        };
        if was_down {
            self.transitions.notify_one();
        }
        was_down
    }

    pub(crate) fn health(&self) -> Health {
        let inner = self.lock();
        Health { consecutive_failures: inner.consecutive_failures, down: inner.state != State::Closed }
    }

    fn configure(&self, settings: &BreakerSettings) {
        let mut inner = self.lock();
        inner.threshold = settings.failure_threshold.max(1);
        inner.cooldown = settings.cooldown;
    }
}

/// Every destination's breaker on this node, created on first use.
#[derive(Debug)]
pub(crate) struct Breakers {
    map: Mutex<HashMap<String, Arc<Breaker>>>,
    settings: Mutex<BreakerSettings>,
    transitions: Arc<Notify>,
}

impl Breakers {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self { map: Mutex::default(), settings: Mutex::new(settings), transitions: Arc::new(Notify::new()) }
    }

    /// Notified on every breaker transition.
    pub(crate) fn transitions(&self) -> Arc<Notify> {
        Arc::clone(&self.transitions)
    }

    pub(crate) fn get(&self, destination: &str) -> Arc<Breaker> {
        let settings = *self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry(destination.to_string())
                .or_insert_with(|| Arc::new(Breaker::new(&settings, Arc::clone(&self.transitions)))),
        )
    }

    /// New settings from the control plane apply to every breaker from now on.
    pub(crate) fn configure(&self, settings: BreakerSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        for breaker in self.snapshot().into_iter().map(|(_, b)| b) {
            breaker.configure(&settings);
        }
    }

    /// Resets one destination's breaker, or all when `destination` is empty; returns how many were down.
    pub(crate) fn reset(&self, destination: &str) -> u64 {
        self.snapshot()
            .into_iter()
            .filter(|(id, _)| destination.is_empty() || id == destination)
            .map(|(_, b)| u64::from(b.reset()))
            .sum()
    }

    pub(crate) fn health(&self) -> Vec<(String, Health)> {
        let mut all: Vec<_> = self.snapshot().into_iter().map(|(id, b)| (id, b.health())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn snapshot(&self) -> Vec<(String, Arc<Breaker>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(threshold: u32) -> Arc<Breaker> {
        let settings = BreakerSettings {
            failure_threshold: threshold,
            cooldown: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            connect_retries: 0,
            login_timeout: Duration::from_secs(30),
        };
        Arc::new(Breaker::new(&settings, Arc::new(Notify::new())))
    }

    fn fail(b: &Arc<Breaker>, n: u32) {
        for _ in 0..n {
            b.admit().unwrap().failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3);
        fail(&b, 2);
        assert!(!b.health().down);
        b.admit().unwrap().success();
        assert_eq!(b.health().consecutive_failures, 0, "a success resets the count");
        fail(&b, 3);
        assert_eq!(b.health(), Health { consecutive_failures: 3, down: true });
        assert_eq!(b.admit().unwrap_err(), Rejected);
    }

    #[tokio::test(start_paused = true)]
    async fn admits_exactly_one_probe_after_cooldown() {
        let b = breaker(1);
        fail(&b, 1);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.admit().is_err(), "still cooling down");
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = b.admit().unwrap();
        assert!(probe.is_probe());
        assert!(b.admit().is_err(), "only one probe while half-open");
        probe.success();
        assert!(!b.health().down);
        assert!(!b.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_full_cooldown() {
        let b = breaker(2);
        fail(&b, 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        b.admit().unwrap().failure();
        assert!(b.health().down);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_caller_probe() {
        let b = breaker(1);
        fail(&b, 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        drop(b.admit().unwrap());
        assert!(b.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_closes_and_reports_the_transition() {
        let settings = BreakerSettings {
            failure_threshold: 1,
            cooldown: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            connect_retries: 0,
            login_timeout: Duration::from_secs(30),
        };
        let breakers = Breakers::new(settings);
        let notify = breakers.transitions();
        breakers.get("legacy").admit().unwrap().failure();
        breakers.get("new").admit().unwrap().success();
        // The open transition stored a wake-up permit.
        tokio::time::timeout(Duration::from_millis(10), notify.notified()).await.unwrap();
        assert_eq!(breakers.reset("new"), 0);
        assert_eq!(breakers.reset(""), 1);
        assert!(breakers.health().iter().all(|(_, h)| !h.down));
        tokio::time::timeout(Duration::from_millis(10), notify.notified()).await.unwrap();
    }
}
