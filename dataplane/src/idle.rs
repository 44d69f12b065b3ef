//! Idle detection for bridged sessions: a shared clock the relay stamps whenever bytes
//! move, and a watchdog that sleeps until the next possible idle deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// When bytes last moved, as milliseconds since `start`.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Records that bytes moved just now.
    pub(crate) fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_resolves_only_after_a_quiet_period() {
        let activity = Activity::new();
        let idle = activity.idle_for(Duration::from_secs(10));
        tokio::pin!(idle);
        tokio::time::advance(Duration::from_secs(8)).await;
        activity.touch();
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(futures::poll!(idle.as_mut()).is_pending(), "the touch at 8s restarted the clock");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(futures::poll!(idle.as_mut()).is_ready());
    }
}
