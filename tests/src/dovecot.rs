//! A real Dovecot 2.3 master per test: own temp dir, OS-chosen ports, stop/restart on the same
//! ports (to trip and heal the proxy's breaker), and LMTP delivery to tell backends apart.
//!
//! The API is synchronous: it only talks to the Dovecot child process, so blocking briefly
//! inside `#[tokio::test]` is harmless (an in-process proxy just pauses meanwhile).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::dovecot_conf::{self, Identity, Ports};
use crate::util::find_binary;

const HOST: &str = "127.0.0.1";
/// How long a fresh master may take to answer on IMAP (it usually needs ~0.1 s).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period after SIGTERM before the master is killed outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at binding freshly chosen ports (start) or the same ports again (restart).
const START_ATTEMPTS: usize = 3;
const RESTART_ATTEMPTS: usize = 5;

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// A running (or stopped) Dovecot. Dropping it stops the master and deletes all its files.
pub struct Dovecot {
    binary: PathBuf,
    conf: PathBuf,
    ports: Ports,
    master: Option<Child>,
    // Last field so it is deleted only after `Drop` has stopped the master.
    dir: TempDir,
}

impl Dovecot {
    /// Starts an instance serving `users` as `(name, password)` pairs; each gets its own home
    /// and maildir. Blocks until the IMAP greeting arrives.
    pub fn start(users: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(users, "")
    }

    /// Like [`Dovecot::start`], appending `extra_conf` to dovecot.conf (Dovecot merges repeated
    /// sections, so this can also switch on e.g. `haproxy = yes` for the imap listener).
    pub fn start_with(users: &[(&str, &str)], extra_conf: &str) -> Result<Self> {
        let binary = find_binary("dovecot").context("dovecot is not installed (scripts/install-deps.sh)")?;
        let dir = tempfile::Builder::new().prefix("switchyard-dovecot-").tempdir()?;
        // Auth runs as `dovecot` and mail processes as the mail uid: both must traverse this.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let id = Identity::current()?;
        write_users(dir.path(), users, &id)?;
        let instance = format!("switchyard-{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed));
        let conf = dir.path().join("dovecot.conf");
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let ports = Ports::allocate()?;
            fs::write(&conf, dovecot_conf::render(dir.path(), &instance, ports, &id, extra_conf))?;
            match launch(&binary, &conf, dir.path(), ports.imap) {
                Ok(master) => {
                    return Ok(Self { binary, conf, ports, master: Some(master), dir });
                }
                // Someone took a port between our probe and Dovecot's bind: new ports.
                Err(err) if is_bind_race(&err) => last_err = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_err.expect("START_ATTEMPTS > 0"))
    }

    pub fn host(&self) -> &'static str {
        HOST
    }
    pub fn imap_port(&self) -> u16 {
        self.ports.imap
    }
    pub fn pop3_port(&self) -> u16 {
        self.ports.pop3
    }
    pub fn lmtp_port(&self) -> u16 {
        self.ports.lmtp
    }
    pub fn sieve_port(&self) -> u16 {
        self.ports.sieve
    }
    /// Dovecot's auth protocol on TCP, for Postfix `smtpd_sasl_type = dovecot`.
    pub fn auth_port(&self) -> u16 {
        self.ports.auth
    }
    pub fn imap_addr(&self) -> SocketAddr {
        addr(self.ports.imap)
    }
    pub fn pop3_addr(&self) -> SocketAddr {
        addr(self.ports.pop3)
    }
    pub fn lmtp_addr(&self) -> SocketAddr {
        addr(self.ports.lmtp)
    }
    pub fn sieve_addr(&self) -> SocketAddr {
        addr(self.ports.sieve)
    }
    pub fn auth_addr(&self) -> SocketAddr {
        addr(self.ports.auth)
    }
    /// The instance's temp dir (config, users file, homes, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.log")
    }
    /// The log so far, e.g. to assert which client IP (`rip=`) Dovecot saw.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn is_running(&self) -> bool {
        self.master.is_some()
    }

    /// Stops the master (SIGTERM, then SIGKILL) and returns once the IMAP port refuses
    /// connections. A no-op when already stopped.
    pub fn stop(&mut self) -> Result<()> {
        let Some(master) = self.master.take() else {
            return Ok(());
        };
        terminate(master)?;
        // The master's children can outlive it by a moment and still hold the listener.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while TcpStream::connect_timeout(&self.imap_addr(), Duration::from_secs(1)).is_ok() {
            ensure!(Instant::now() < deadline, "IMAP port still open after stopping Dovecot");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts again on the same ports with the same mailboxes (stopping first if needed).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let mut last_err = None;
        for _ in 0..RESTART_ATTEMPTS {
            match launch(&self.binary, &self.conf, self.dir.path(), self.ports.imap) {
                Ok(master) => {
                    self.master = Some(master);
                    return Ok(());
                }
                Err(err) if is_bind_race(&err) => {
                    last_err = Some(err);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_err.expect("RESTART_ATTEMPTS > 0"))
    }

    /// Delivers a small message with `subject` to `user`'s INBOX over LMTP, so a test can tell
    /// which backend a login landed on.
    pub fn deliver(&self, user: &str, subject: &str) -> Result<()> {
        let message = format!(
            "From: <harness@example.test>\r\nTo: <{user}>\r\nSubject: {subject}\r\n\
             Message-ID: <{}.{}@switchyard.test>\r\n\r\nDelivered by the Switchyard test harness.\r\n",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        lmtp_deliver(self.lmtp_addr(), user, &message)
            .with_context(|| format!("delivering {subject:?} to {user} over LMTP"))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(master) = self.master.take() {
            let _ = terminate(master);
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes the passwd-file and creates each home owned by the mail uid, because Dovecot's
/// mail processes run as that uid and must create the maildir.
fn write_users(dir: &Path, users: &[(&str, &str)], id: &Identity) -> Result<()> {
    let mut passwd = String::new();
    for (i, (user, pass)) in users.iter().enumerate() {
        let home = dir.join("home").join(format!("user{i}"));
        fs::create_dir_all(&home)?;
        std::os::unix::fs::chown(&home, Some(id.uid), Some(id.gid))
            .with_context(|| format!("chown {} to {}", home.display(), id.uid))?;
        passwd.push_str(&dovecot_conf::passwd_line(user, pass, id, &home));
    }
    fs::write(dir.join("users"), passwd)?;
    Ok(())
}

/// Spawns `dovecot -F` and waits for the IMAP greeting; on failure the child is stopped and
/// the error carries Dovecot's stderr and log tail.
fn launch(binary: &Path, conf: &Path, dir: &Path, imap_port: u16) -> Result<Child> {
    // A stale base_dir from the previous master holds dead sockets; auth would wait 5 s on the
    // old anvil socket. State and mail live elsewhere, so it is safe to wipe.
    let run = dir.join("run");
    if run.exists() {
        fs::remove_dir_all(&run)?;
    }
    let stderr_path = dir.join("dovecot.stderr");
    let stderr = File::create(&stderr_path)?;
    let mut master = Command::new(binary)
        .arg("-F")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(stderr.try_clone()?)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    match wait_ready(&mut master, addr(imap_port)) {
        Ok(()) => Ok(master),
        Err(err) => {
            let _ = terminate(master);
            let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
            let log = fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(err
                .context(format!("Dovecot did not become ready.\nstderr:\n{stderr}\nlog tail:\n{}", tail.join("\n"))))
        }
    }
}

/// Polls the IMAP port with a short backoff until a `* OK` greeting arrives.
fn wait_ready(master: &mut Child, imap: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut backoff = Duration::from_millis(10);
    let mut last = String::from("no connection attempt yet");
    while Instant::now() < deadline {
        if let Some(status) = master.try_wait()? {
            bail!("dovecot exited with {status} before accepting connections ({last})");
        }
        match read_greeting(imap) {
            Ok(line) if line.starts_with("* OK") => return Ok(()),
            Ok(line) => last = format!("unexpected greeting {line:?}"),
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
    bail!("no IMAP greeting on {imap} within {READY_TIMEOUT:?} ({last})")
}

fn read_greeting(imap: SocketAddr) -> Result<String> {
    let stream = TcpStream::connect_timeout(&imap, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// SIGTERM lets the master take its children down with it (SIGKILL would orphan them with
/// the listeners still open); SIGKILL only if it does not exit in time.
fn terminate(mut master: Child) -> Result<()> {
    let pid = rustix::process::Pid::from_child(&master);
    if master.try_wait()?.is_none() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if master.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    master.kill()?;
    master.wait()?;
    Ok(())
}

fn is_bind_race(err: &anyhow::Error) -> bool {
    format!("{err:#}").contains("Address already in use")
}

/// A minimal LMTP client transaction (RFC 2033) for one recipient.
fn lmtp_deliver(lmtp: SocketAddr, rcpt: &str, message: &str) -> Result<()> {
    let stream = TcpStream::connect_timeout(&lmtp, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    expect_reply(&mut reader, "220")?;
    let steps = [
        ("LHLO harness.switchyard.test".to_string(), "250"),
        ("MAIL FROM:<harness@example.test>".to_string(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".to_string(), "354"),
    ];
    for (command, code) in steps {
        write!(writer, "{command}\r\n")?;
        expect_reply(&mut reader, code).with_context(|| format!("after {command}"))?;
    }
    for line in message.lines() {
        // Dot-stuffing, so a body line "." cannot end the message early.
        let stuffed = if line.starts_with('.') { "." } else { "" };
        write!(writer, "{stuffed}{line}\r\n")?;
    }
    write!(writer, ".\r\n")?;
    expect_reply(&mut reader, "250").context("after the message data")?;
    write!(writer, "QUIT\r\n")?;
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}

/// Reads a (possibly multi-line `250-...`) reply and checks its code.
fn expect_reply(reader: &mut impl BufRead, code: &str) -> Result<String> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        ensure!(reader.read_line(&mut line)? > 0, "connection closed (got {reply:?})");
        reply.push_str(&line);
        // The last line of a reply has a space (or nothing) after the code, not a dash.
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    ensure!(reply.starts_with(code), "expected {code}, got {:?}", reply.trim_end());
    Ok(reply)
}
