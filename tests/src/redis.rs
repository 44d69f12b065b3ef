//! A real, throwaway `redis-server` per test: its own temp dir and a free port on
//! 127.0.0.1, no persistence, stopped on drop, and restartable on the same port (to test
//! what a store does while its server is away).
//!
//! ```ignore
//! if !require_or_skip("redis-server") { return Ok(()); }
//! let mut redis = Redis::start()?;
//! let config = RedisConfig { url: Some(redis.url()), ..RedisConfig::default() };
//! redis.stop()?;
//! redis.restart()?;
//! ```

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::retry::{poll_ready, start_with_retry, Retry};
use crate::util::{find_binary, free_port};

/// How long a fresh server may take to answer PING (it usually needs a few ms).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) Redis. Dropping it kills the server and deletes its directory.
pub struct Redis {
    binary: PathBuf,
    port: u16,
    server: Option<Child>,
    // Last field so it is deleted only after `Drop` has stopped the server.
    dir: TempDir,
}

impl Redis {
    /// Starts a server on a free port; returns once it answers PING. Fails when
    /// `redis-server` is not installed (check with `require_or_skip("redis-server")` first).
    pub fn start() -> Result<Redis> {
        let binary = find_binary("redis-server").context("redis-server is not installed (scripts/install-deps.sh)")?;
        let dir = tempfile::Builder::new().prefix("switchyard-redis-").tempdir()?;
        let log = dir.path().join("redis.log");
        let (port, server) = start_with_retry("redis-server", &log, Retry::FRESH_PORTS, || {
            let port = free_port();
            launch(&binary, &dir, port).map(|server| (port, server))
        })?;
        Ok(Redis { binary, port, server: Some(server), dir })
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Kills the server (its data is gone: it never saves) and waits for it to exit. A
    /// no-op when already stopped. SIGKILL also ends a frozen server.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut server) = self.server.take() {
            server.kill().context("killing redis-server")?;
            server.wait().context("waiting for redis-server to exit")?;
        }
        Ok(())
    }

    /// Suspends the server (SIGSTOP): connections stay open and commands hang unanswered,
    /// like a server stuck under load or behind a dead network path.
    pub fn freeze(&self) -> Result<()> {
        self.signal(rustix::process::Signal::STOP)
    }

    /// Resumes a frozen server (SIGCONT); it answers what was queued meanwhile.
    pub fn thaw(&self) -> Result<()> {
        self.signal(rustix::process::Signal::CONT)
    }

    fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let server = self.server.as_ref().context("redis-server is not running")?;
        let pid = rustix::process::Pid::from_child(server);
        rustix::process::kill_process(pid, signal).with_context(|| format!("sending {signal:?} to redis-server"))
    }

    /// Sends `commands` as one MULTI/EXEC transaction (e.g. `FLUSHALL` together with a
    /// `CONFIG SET`, so nothing runs between them) and returns the replies as text.
    pub fn transaction(&self, commands: &[&[&str]]) -> Result<Vec<String>> {
        let client = redis::Client::open(self.url()).context("redis URL")?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5)).context("connecting to redis")?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for command in commands {
            let (name, args) = command.split_first().context("an empty command")?;
            pipe.cmd(name).arg(args);
        }
        let replies: Vec<redis::Value> = pipe.query(&mut conn).context("running the transaction")?;
        Ok(replies.iter().map(|v| format!("{v:?}")).collect())
    }

    /// Starts an empty server again on the same port (stopping it first if needed).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let log = self.dir.path().join("redis.log");
        let server =
            start_with_retry("redis-server", &log, Retry::SAME_PORTS, || launch(&self.binary, &self.dir, self.port))?;
        self.server = Some(server);
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Spawns the server and waits for PONG; on failure the child is killed and the error
/// carries the server's log.
fn launch(binary: &Path, dir: &TempDir, port: u16) -> Result<Child> {
    let log_path = dir.path().join("redis.log");
    let log = File::create(&log_path)?;
    let mut server = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    match wait_ready(&mut server, port) {
        Ok(()) => Ok(server),
        Err(err) => {
            let _ = server.kill();
            let _ = server.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            Err(err.context(format!("redis-server did not become ready on port {port}.\nlog:\n{log}")))
        }
    }
}

/// Polls with PING until PONG, with a short backoff; fails early if the server exits.
fn wait_ready(server: &mut Child, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    poll_ready(&format!("redis-server on {addr}"), READY_TIMEOUT, Duration::from_millis(100), || {
        if let Some(status) = server.try_wait()? {
            bail!("redis-server exited with {status} before answering");
        }
        Ok(ping(addr).err().map(|err| format!("{err:#}")))
    })
}

fn ping(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply != b"+PONG\r\n" {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}
