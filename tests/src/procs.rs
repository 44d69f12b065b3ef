//! The real `dataplane` and `controlplane` binaries as child processes: found (or built)
//! next to the test executable, started with a config file, their stderr log collected
//! line by line, bound addresses read from it, resident memory read from /proc; and the
//! open-file limit a test with many connections needs.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::sync::oneshot::error::TryRecvError;

use crate::eventually;

/// How long a log line may take to appear.
const WAIT: Duration = Duration::from_secs(15);

/// `target/<profile>/<name>`: the directory above the test executable's `deps/`.
///
/// `cargo test --workspace --all-targets` (scripts/test.sh) builds it fresh. A test run on
/// its own (`cargo test -p switchyard-tests --test bad_input`) builds it only when it is
/// missing, and otherwise uses the last build: rebuilding every time with `-p` would
/// resolve other dependency features than the workspace build and recompile half the tree.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("no target dir")?;
    let path = dir.join(name);
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or_default();
    if !path.exists() && matches!(profile, "debug" | "release") {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", name, "--bin", name]);
        if profile == "release" {
            build.arg("--release");
        }
        let out = build.output().with_context(|| format!("building {name}"))?;
        ensure!(out.status.success(), "building {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    ensure!(path.exists(), "{} not built (cargo test --workspace --all-targets builds it)", path.display());
    Ok(path)
}

/// `<bin> --config <toml> --check` (the config written to `dir`): (passed, stderr).
pub fn check_config(dir: &Path, bin: &str, toml: &str) -> Result<(bool, String)> {
    let path = write_file(dir, &format!("{bin}.toml"), toml)?;
    let out = Command::new(binary(bin)?).arg("--config").arg(path).arg("--check").output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::File::create(&path)?.write_all(text.as_bytes())?;
    Ok(path)
}

/// A child process whose stderr is collected line by line; killed on drop.
pub struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `name --config <config>` with `RUST_LOG` cleared and `env` added.
    pub fn spawn(name: &str, config: &Path, env: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(binary(name)?);
        cmd.arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Proc { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `Signal::STOP`, `Signal::CONT`) to the process.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).with_context(|| format!("sending {signal:?} to {}", self.pid()))
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for a log line containing every one of `needles`; returns it.
    pub async fn wait_for(&self, needles: &[&str]) -> Result<String> {
        eventually(WAIT, || async {
            let found = self.lines().into_iter().find(|l| needles.iter().all(|n| l.contains(n)));
            found.with_context(|| format!("no line with {needles:?} in:\n{}", self.lines().join("\n")))
        })
        .await
    }

    /// The address in the `addr=` field of the first line containing all of `needles`.
    pub async fn bound(&self, needles: &[&str]) -> Result<SocketAddr> {
        let mut all = needles.to_vec();
        all.push("addr=");
        let line = self.wait_for(&all).await?;
        let addr = line.split("addr=").nth(1).and_then(|s| s.split_whitespace().next()).context("addr")?;
        Ok(addr.parse()?)
    }

    /// Resident memory in KiB (`VmRSS` in /proc/<pid>/status).
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of any process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib = line.split_whitespace().nth(1).context("VmRSS value")?;
    Ok(kib.parse()?)
}

/// Samples a process's RSS every 20 ms until stopped; returns the highest value seen.
pub struct PeakRss {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> PeakRss {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        PeakRss { stop, task }
    }

    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// Raises this process's soft limit on open files to `needed` (within the hard limit) if
/// it is lower, for tests that open many connections. Children started later inherit it.
/// It never lowers the limit, also when tests raise it concurrently.
pub fn raise_fd_limit(needed: u64) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // Tests in one binary run in parallel: without the lock a smaller raise could undo a
    // larger one between its read and its write.
    static RAISING: Mutex<()> = Mutex::new(());
    let _raising = RAISING.lock().unwrap_or_else(|e| e.into_inner());
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return Ok(());
    }
    let raised = limit.maximum.map_or(needed, |hard| hard.min(needed));
    ensure!(raised >= needed, "need {needed} file descriptors, the hard limit is {raised}");
    setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum: limit.maximum })?;
    Ok(())
}
