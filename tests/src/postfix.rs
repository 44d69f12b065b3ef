//! A real Postfix 3.7 per test, started as a throwaway instance (`postfix -c DIR start`) with
//! its own queue: a submission listener that authenticates through Dovecot's auth service, a
//! port-25-role listener without AUTH, and delivery of the test domains to Dovecot over LMTP.
//!
//! Needs root (`postfix start` refuses otherwise). Synchronous like `Dovecot`: it only runs
//! the `postfix` command and probes ports, so blocking briefly in `#[tokio::test]` is fine.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::certs::TestPki;
use crate::dovecot::Dovecot;
use crate::postfix_conf::{self, Ports, Settings};
use crate::retry::{poll_ready, start_with_retry, Retry};
use crate::util::find_binary;
use crate::wire::read_greeting;

/// The domain `Postfix::start` relays to Dovecot; the harness's users live there.
pub const TEST_DOMAIN: &str = "example.test";
/// Both smtpd listeners usually greet ~0.3 s after `postfix start` begins.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// Where a Postfix instance delivers and authenticates, and what else it offers.
#[derive(Clone, Copy)]
pub struct PostfixOptions<'a> {
    /// Dovecot (or a proxy's) LMTP port that receives mail for `domains`.
    pub lmtp_port: u16,
    /// Dovecot's auth `inet_listener` (see [`Dovecot::auth_port`]) for submission AUTH.
    pub auth_port: u16,
    /// STARTTLS on both listeners with a leaf for `127.0.0.1`/`localhost` from this CA.
    pub tls: Option<&'a TestPki>,
    pub domains: &'a [&'a str],
    /// Appended to main.cf verbatim; a later line overrides an earlier one.
    pub extra_main_cf: &'a str,
}

impl<'a> PostfixOptions<'a> {
    /// Delivery and AUTH through `dovecot`, domain `example.test`, no TLS.
    pub fn for_dovecot(dovecot: &Dovecot) -> Self {
        Self {
            lmtp_port: dovecot.lmtp_port(),
            auth_port: dovecot.auth_port(),
            tls: None,
            domains: &[TEST_DOMAIN],
            extra_main_cf: "",
        }
    }
}

/// A running (or stopped) Postfix. Dropping it stops the master and deletes its files.
pub struct Postfix {
    binary: PathBuf,
    ports: Ports,
    hostname: String,
    /// The daemonized master, read from its pid file; `None` when stopped.
    master: Option<i32>,
    // Last field so it is deleted only after `Drop` has stopped the master.
    dir: TempDir,
}

impl Postfix {
    /// An instance in front of `dovecot` (see [`PostfixOptions::for_dovecot`]).
    pub fn start(dovecot: &Dovecot) -> Result<Self> {
        Self::start_with(&PostfixOptions::for_dovecot(dovecot))
    }

    /// Like [`Postfix::start`], with STARTTLS (`smtpd_tls_security_level = may`).
    pub fn start_tls(dovecot: &Dovecot, pki: &TestPki) -> Result<Self> {
        Self::start_with(&PostfixOptions { tls: Some(pki), ..PostfixOptions::for_dovecot(dovecot) })
    }

    /// Writes the instance, starts it and waits for the `220` greeting on both listeners.
    pub fn start_with(options: &PostfixOptions<'_>) -> Result<Self> {
        ensure!(
            rustix::process::geteuid().is_root(),
            "a throwaway Postfix needs root (postfix start refuses otherwise)"
        );
        let binary = find_binary("postfix").context("postfix is not installed (scripts/install-deps.sh)")?;
        let dir = tempfile::Builder::new().prefix("switchyard-postfix-").tempdir()?;
        // Daemons that dropped to the postfix user reach data/ and tls/ through this.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        for sub in ["etc", "spool", "data"] {
            fs::create_dir(dir.path().join(sub))?;
        }
        // `postfix check` creates the spool's subdirectories, but data_directory must already
        // belong to the mail owner.
        let (uid, gid) = (account_id("-u")?, account_id("-g")?);
        std::os::unix::fs::chown(dir.path().join("data"), Some(uid), Some(gid))?;
        if let Some(pki) = options.tls {
            let (cert, key) = pki.issue(&["127.0.0.1", "localhost"])?;
            fs::create_dir(dir.path().join("tls"))?;
            fs::copy(cert, dir.path().join("tls/cert.pem"))?;
            fs::copy(key, dir.path().join("tls/key.pem"))?;
        }
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let hostname = format!("mx{n}-{}.example.test", std::process::id());
        let main_cf = postfix_conf::main_cf(&Settings {
            dir: dir.path(),
            hostname: &hostname,
            lmtp_port: options.lmtp_port,
            auth_port: options.auth_port,
            domains: options.domains,
            tls: options.tls.is_some(),
            extra: options.extra_main_cf,
        });
        write_config(&dir.path().join("etc/main.cf"), &main_cf)?;
        let mut postfix = Self { binary, ports: Ports::allocate()?, hostname, master: None, dir };
        let log = postfix.log_path();
        start_with_retry("Postfix", &log, Retry::FRESH_PORTS, || postfix.start_once(true))?;
        Ok(postfix)
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    /// The port-25 role: no AUTH, mail for the test domains only.
    pub fn smtp_port(&self) -> u16 {
        self.ports.smtp
    }
    /// Submission: AUTH (PLAIN/LOGIN through Dovecot) required before RCPT.
    pub fn submission_port(&self) -> u16 {
        self.ports.submission
    }
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.smtp))
    }
    pub fn submission_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.submission))
    }
    /// `myhostname`, unique per instance: it appears in the greeting and Received headers.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// The instance's temp dir (`etc/`, `spool/`, `data/`, `maillog`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("maillog")
    }
    /// The maillog so far (written by postlogd, so it can lag a moment behind events).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn is_running(&self) -> bool {
        self.master.is_some()
    }

    /// Stops the master the way `postfix stop` does (SIGTERM to the pid in its pid file), then
    /// waits until it is gone and both listeners refuse connections; SIGKILL to its process
    /// group if it lingers, as postfix-script does. Polling here instead of running
    /// `postfix stop` saves up to a second: the script re-checks in 1 s steps. A no-op when
    /// already stopped.
    pub fn stop(&mut self) -> Result<()> {
        // The pid file too: a failed start may have left a master behind.
        let Some(pid) = self.master.take().or_else(|| self.pid_from_file()) else {
            return Ok(());
        };
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            bail!("invalid Postfix master pid {pid}");
        };
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while process_alive(pid.as_raw_nonzero().get()) || self.any_port_open() {
            if Instant::now() >= deadline {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                bail!("Postfix master {pid:?} still running {STOP_TIMEOUT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts again with the same ports, configuration and queue (stopping first if needed).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let log = self.log_path();
        start_with_retry("Postfix", &log, Retry::SAME_PORTS, || self.start_once(false))
    }

    /// One start: on `fresh_ports`, new ports written to master.cf first. Whatever did start
    /// is stopped again when the start fails.
    fn start_once(&mut self, fresh_ports: bool) -> Result<()> {
        if fresh_ports {
            self.ports = Ports::allocate()?;
            write_config(&self.dir.path().join("etc/master.cf"), &postfix_conf::master_cf(self.ports))?;
        }
        self.launch().inspect_err(|_| {
            let _ = self.stop();
        })
    }

    /// `postfix start` (its `master -w` returns once the master is initialized), then the
    /// greeting on both listeners.
    fn launch(&mut self) -> Result<()> {
        let (ok, output) = self.postfix("start")?;
        if !ok {
            bail!("postfix start failed: {output}\nmaillog tail:\n{}", self.log_tail());
        }
        self.master = self.pid_from_file();
        ensure!(self.master.is_some(), "postfix start left no master pid file: {output}");
        self.wait_ready().with_context(|| format!("Postfix did not become ready.\nmaillog tail:\n{}", self.log_tail()))
    }

    /// Runs `postfix -c DIR/etc <command>` and returns (success, its output). Output goes to
    /// a file, not a pipe: the daemonized master would inherit the pipe and keep it open.
    fn postfix(&self, command: &str) -> Result<(bool, String)> {
        let out_path = self.dir.path().join("postfix.out");
        let out = File::create(&out_path)?;
        let status = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg(command)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("running {} {command}", self.binary.display()))?;
        Ok((status.success(), fs::read_to_string(out_path).unwrap_or_default().trim().to_string()))
    }

    fn wait_ready(&self) -> Result<()> {
        for addr in [self.smtp_addr(), self.submission_addr()] {
            poll_ready(&format!("Postfix's smtpd on {addr}"), READY_TIMEOUT, Duration::from_millis(200), || {
                Ok(match read_greeting(addr) {
                    Ok(line) if line.starts_with("220 ") => None,
                    Ok(line) => Some(format!("unexpected greeting {line:?}")),
                    Err(err) => Some(format!("{err:#}")),
                })
            })?;
        }
        Ok(())
    }

    fn pid_from_file(&self) -> Option<i32> {
        let text = fs::read_to_string(self.dir.path().join("spool/pid/master.pid")).ok()?;
        text.trim().parse().ok().filter(|pid| process_alive(*pid))
    }

    fn any_port_open(&self) -> bool {
        [self.smtp_addr(), self.submission_addr()]
            .iter()
            .any(|addr| TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok())
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.master.is_some() {
            let _ = self.stop();
        }
    }
}

/// Writes a config file with an mtime a minute in the past: Postfix re-reads a file changed
/// within the last second until it is a second old, in 300 ms steps (a 2.4 s start-up delay).
fn write_config(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    let past = SystemTime::now() - Duration::from_secs(60);
    File::options().write(true).open(path)?.set_modified(past)?;
    Ok(())
}

/// Numeric uid (`-u`) or gid (`-g`) of the postfix account, via coreutils' `id` (NSS-aware).
fn account_id(flag: &str) -> Result<u32> {
    let out = Command::new("id").args([flag, "postfix"]).output().context("running id")?;
    ensure!(out.status.success(), "no postfix account (is the postfix package installed?)");
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// Running, i.e. present in /proc and not a zombie. The daemonized master is reparented to
/// PID 1, which may reap it only some time after it exited.
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')', since comm may contain one.
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}
