//! Starting a real server (Dovecot, Postfix, PostgreSQL, Redis) despite port races: one
//! attempt picks its ports, starts the server and probes it by connecting; an attempt that
//! failed because a port was taken meanwhile is repeated a bounded number of times (fresh
//! ports on a first start, the same ports after a pause on a restart). Any other failure,
//! and the last port race, end with an error naming the server and its log.
//!
//! Synchronous like the harnesses that use it: they only wait on child processes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often a start is tried and how long to pause between tries.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: usize,
    pub pause: Duration,
}

impl Retry {
    /// A first start: each attempt takes fresh ports, so no pause is needed.
    pub const FRESH_PORTS: Retry = Retry { attempts: 3, pause: Duration::ZERO };
    /// A restart on the same ports: the old process (or a racer) may hold them a moment.
    pub const SAME_PORTS: Retry = Retry { attempts: 5, pause: Duration::from_millis(200) };
}

/// Runs `attempt` until it succeeds, retrying (per `retry`) only while it fails because a
/// port was taken. `attempt` must leave nothing running when it fails. Errors say which
/// `server` failed and where its `log` is.
pub fn start_with_retry<T>(
    server: &str,
    log: &Path,
    retry: Retry,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Ok(started) => return Ok(started),
            Err(err) if is_port_taken(&err) && tries < retry.attempts => std::thread::sleep(retry.pause),
            Err(err) if is_port_taken(&err) => {
                let context = format!("{server} found its ports taken {tries} times (log: {})", log.display());
                return Err(err.context(context));
            }
            Err(err) => return Err(err.context(format!("{server} did not start (log: {})", log.display()))),
        }
    }
}

/// Whether a failed start says a port was already bound by someone else.
pub fn is_port_taken(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("Address already in use") || text.contains("could not bind")
}

/// Calls `probe` with a short, growing backoff (capped at `max_backoff`) until it returns
/// `Ok(None)` (ready) or `timeout` has passed; `Ok(Some(reason))` means "not yet", `Err`
/// stops at once (e.g. the process exited). A timeout's message names `what` and the last
/// reason.
pub fn poll_ready(
    what: &str,
    timeout: Duration,
    max_backoff: Duration,
    mut probe: impl FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(5).min(max_backoff);
    loop {
        let Some(reason) = probe()? else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            bail!("{what} not ready within {timeout:?} ({reason})");
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn a_port_race_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let started = start_with_retry("server", Path::new("/log"), Retry::FRESH_PORTS, || {
            calls += 1;
            if calls < 3 {
                return Err(anyhow!("bind: Address already in use"));
            }
            Ok(calls)
        });
        assert_eq!(started.unwrap(), 3);

        let mut calls = 0;
        let err = start_with_retry("redis-server", Path::new("/tmp/x.log"), Retry::FRESH_PORTS, || {
            calls += 1;
            Err::<(), _>(anyhow!("bad config"))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        let text = format!("{err:#}");
        assert!(text.contains("redis-server") && text.contains("/tmp/x.log") && text.contains("bad config"), "{text}");
    }

    #[test]
    fn the_last_port_race_names_the_server() {
        let err = start_with_retry("Dovecot", Path::new("/d.log"), Retry::FRESH_PORTS, || {
            Err::<(), _>(anyhow!("Address already in use"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("Dovecot found its ports taken 3 times"), "{err:#}");
    }

    #[test]
    fn poll_ready_stops_on_success_error_or_timeout() {
        let mut calls = 0;
        poll_ready("x", Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            Ok((calls < 3).then(|| "not yet".to_string()))
        })
        .unwrap();
        assert_eq!(calls, 3);
        let err = poll_ready("x", Duration::from_secs(5), Duration::from_millis(1), || {
            Err::<Option<String>, _>(anyhow!("exited"))
        });
        assert!(format!("{:#}", err.unwrap_err()).contains("exited"));
        let err = poll_ready("srv", Duration::from_millis(20), Duration::from_millis(5), || Ok(Some("closed".into())));
        assert!(format!("{:#}", err.unwrap_err()).contains("srv not ready within 20ms (closed)"));
    }
}
