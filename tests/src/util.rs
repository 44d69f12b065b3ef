//! Generic test plumbing: ephemeral ports, polling instead of sleeping, and skip-or-fail for
//! real mail servers that may not be installed.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// How long [`wait_for_port`] keeps trying before it gives up.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ceiling of the backoff in [`eventually`]: short enough to keep tests fast.
const MAX_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// A port the OS just handed out on 127.0.0.1. The listener is dropped, so a racing process
/// could take it; callers that spawn servers retry on "address in use".
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("the OS has no free port on 127.0.0.1")
        .port()
}

/// Polls until something accepts TCP connections on `addr` (at most 10 s).
pub async fn wait_for_port(addr: SocketAddr) -> Result<()> {
    eventually(PORT_TIMEOUT, || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .with_context(|| format!("nothing accepts connections on {addr}"))
    })
    .await
}

/// Retries `f` with a short, growing interval until it returns `Ok` or `timeout` has passed;
/// on timeout the last error is returned. Use it for anything that propagates asynchronously
/// (routes pushed by the control plane, a breaker closing again) instead of a fixed sleep.
pub async fn eventually<F, Fut, T>(timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(err.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => {
                tokio::time::sleep(interval).await;
                interval = (interval * 2).min(MAX_RETRY_INTERVAL);
            }
        }
    }
}

/// Waits for one wake-up of `wake`, failing after `timeout` with `what` in the message.
pub async fn woken(wake: &tokio::sync::Notify, timeout: Duration, what: &str) -> Result<()> {
    tokio::time::timeout(timeout, wake.notified())
        .await
        .with_context(|| format!("no wake-up within {timeout:?}: {what}"))
}

/// True when a missing real server must fail the run instead of skipping the test.
pub fn real_servers_required() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let forced = std::env::var("SWITCHYARD_REQUIRE_REAL_SERVERS").is_ok_and(|v| v == "1");
    ci || forced
}

/// Returns whether `binary` is installed. When it is missing, panics in CI (or with
/// `SWITCHYARD_REQUIRE_REAL_SERVERS=1`) so a broken image cannot pass as green; otherwise
/// prints a SKIP line and returns false so a developer without Dovecot can still run tests.
///
/// ```ignore
/// if !require_or_skip("dovecot") { return Ok(()); }
/// ```
pub fn require_or_skip(binary: &str) -> bool {
    if find_binary(binary).is_some() {
        return true;
    }
    if real_servers_required() {
        panic!(
            "{binary} is not installed, but real servers are required here \
             (CI=true or SWITCHYARD_REQUIRE_REAL_SERVERS=1); run scripts/install-deps.sh"
        );
    }
    eprintln!("SKIP: {binary} not installed (run scripts/install-deps.sh)");
    false
}

/// Finds an executable by name on `PATH`, then in the sbin directories: Dovecot and Postfix
/// live in /usr/sbin, which is often missing from a non-root user's `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[tokio::test]
    async fn eventually_retries_until_ok() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), || {
            calls += 1;
            let attempt = calls;
            async move {
                if attempt < 3 {
                    bail!("attempt {attempt} not yet");
                }
                Ok(attempt)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn eventually_returns_the_last_error() {
        let mut calls = 0;
        let err = eventually(Duration::from_millis(50), || {
            calls += 1;
            let attempt = calls;
            async move { Err::<(), _>(anyhow::anyhow!("failure {attempt}")) }
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains(&format!("failure {calls}")), "{err:#}");
        assert!(calls > 1, "should have retried, got {calls} call(s)");
    }

    #[test]
    fn finds_binaries_in_sbin_and_rejects_unknown_ones() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("definitely-not-a-switchyard-binary").is_none());
    }

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port(), 0);
    }
}
