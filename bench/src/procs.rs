//! Child processes under test: the release binaries (and the scripted backend) spawned with
//! their stderr in a file, addresses read back from their logs, and their CPU time and RSS
//! read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How long a process may take to log what we wait for.
const WAIT: Duration = Duration::from_secs(20);
/// How long a process may take to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where the release binaries are: beside this bench binary (`target/release/`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no directory above the bench binary")?.to_path_buf())
}

pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    ensure!(path.exists(), "{} not built (scripts/bench.sh builds it)", path.display());
    Ok(path)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; children spawned later inherit it.
/// Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let mut raised = limit;
    raised.current = limit.maximum;
    if setrlimit(Resource::Nofile, raised).is_ok() {
        limit.maximum.unwrap_or(u64::MAX)
    } else {
        limit.current.unwrap_or(u64::MAX)
    }
}

/// A child whose stderr goes to `log`; killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Runs `program args…` with `env`, stderr (and stdout) to `dir/{name}.log`. With
    /// `cpu = Some(n)` the process is pinned to CPU `n` through `taskset`, when present.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        cpu: Option<usize>,
    ) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let taskset = cpu.filter(|_| switchyard_tests::find_binary("taskset").is_some());
        let mut cmd = match taskset {
            Some(n) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(n.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("spawning {}", program.display()))?;
        Ok(Proc { name: name.to_string(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log for a line containing every one of `needles`.
    pub async fn wait_for(&mut self, needles: &[&str]) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before logging {needles:?}:\n{}", self.name, tail(&text));
            }
            if Instant::now() > deadline {
                bail!("{} logged no {needles:?} within {WAIT:?}:\n{}", self.name, tail(&text));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has exited, with its status and the end of its log.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        Some(format!("{} exited ({status}):\n{}", self.name, tail(&self.log_text())))
    }

    /// The end of the log, for an error message.
    pub fn log_tail(&self) -> String {
        tail(&self.log_text())
    }

    /// The `addr=` field of the first log line containing every one of `needles`.
    pub async fn bound(&mut self, needles: &[&str]) -> Result<SocketAddr> {
        let mut all = needles.to_vec();
        all.push("addr=");
        let line = self.wait_for(&all).await?;
        let addr = line.split("addr=").nth(1).and_then(|s| s.split_whitespace().next()).context("addr")?;
        Ok(addr.parse()?)
    }

    /// CPU time and RSS right now.
    pub fn usage(&self) -> Result<Usage> {
        Usage::of(self.pid())
    }

    /// Open file descriptors right now.
    pub fn fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a master process (nginx) takes its workers down with it; SIGKILL
    /// if it has not exited within `STOP_GRACE`.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Busy CPU time of the whole machine since boot (every core, every process), from
/// `/proc/stat`: user, nice, system, irq, softirq and steal.
pub fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Ok(Duration::from_secs_f64(busy as f64 / rustix::param::clock_ticks_per_second() as f64))
}

/// utime + stime (+ cutime + cstime of reaped children with `reaped`) of one process, in clock ticks.
fn ticks(pid: u32, reaped: bool) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime..cstime are fields 14-17 of stat(5); `rest` starts at field 3.
    let own = fields[11] + fields[12];
    Ok(if reaped { own + fields[13] + fields[14] } else { own })
}

/// A child that exits between listing and reading counts as nothing (its parent's
/// cutime has it once reaped).
fn ticks_or_zero(pid: u32) -> u64 {
    ticks(pid, true).unwrap_or(0)
}

/// A process's CPU time (user + system) and resident set size at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub at: Instant,
}

impl Usage {
    /// CPU of `pid` and its children (live ones and reaped ones: nginx and Dovecot work
    /// in child processes); RSS of `pid` alone.
    pub fn of(pid: u32) -> Result<Usage> {
        Usage::read(pid, true)
    }

    /// This process alone: its children are the processes under test.
    pub fn of_self() -> Result<Usage> {
        Usage::read(std::process::id(), false)
    }

    fn read(pid: u32, children: bool) -> Result<Usage> {
        let mut ticks = ticks(pid, children)?;
        if children {
            let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for child in list.split_whitespace().filter_map(|c| c.parse().ok()) {
                ticks += ticks_or_zero(child);
            }
        }
        let hz = rustix::param::clock_ticks_per_second();
        let cpu = Duration::from_secs_f64(ticks as f64 / hz as f64);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("VmRSS")?
            .parse()?;
        Ok(Usage { cpu, rss_kib, at: Instant::now() })
    }

    /// CPU seconds used since `earlier`, and the share of one core over the wall time.
    pub fn cpu_since(&self, earlier: &Usage) -> (f64, f64) {
        let cpu = self.cpu.saturating_sub(earlier.cpu).as_secs_f64();
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        (cpu, cpu / wall)
    }
}
