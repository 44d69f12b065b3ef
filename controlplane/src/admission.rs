//! Admission of node Sessions: a token bucket so a reconnect storm (a control plane
//! restart seen by a whole fleet) is admitted at a bounded rate; refused nodes retry with
//! their jittered backoff.

use std::sync::Mutex;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Admission {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Admission {
    /// `rate` sessions per second on average, up to `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Admission { rate: f64::from(rate.max(1)), burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes one token if there is one.
    pub fn try_admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let now = Instant::now();
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            true
        } else {
            *state = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn admits_a_burst_then_the_rate() {
        let admission = Admission::new(10, 5);
        assert_eq!((0..20).filter(|_| admission.try_admit()).count(), 5, "the burst");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..20).filter(|_| admission.try_admit()).count(), 5, "10/s for half a second");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..20).filter(|_| admission.try_admit()).count(), 5, "never more than the burst");
    }
}
