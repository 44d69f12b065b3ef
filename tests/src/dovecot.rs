//! A real Dovecot 2.3 master per test: own temp dir, OS-chosen ports, stop/restart on the same
//! ports (to trip and heal the proxy's breaker), and LMTP delivery to tell backends apart.
//!
//! The API is synchronous: it only talks to the Dovecot child process, so blocking briefly
//! inside `#[tokio::test]` is harmless (an in-process proxy just pauses meanwhile).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::certs::TestPki;
use crate::dovecot_conf::{self, Features, Identity, Ports, MASTER_USER_SEPARATOR};
use crate::retry::{poll_ready, start_with_retry, Retry};
use crate::util::find_binary;
use crate::wire::{lmtp_deliver, read_greeting};

const HOST: &str = "127.0.0.1";
/// How long a fresh master may take to answer on IMAP (it usually needs ~0.1 s).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period after SIGTERM before the master is killed outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// What [`Dovecot::start_with_options`] adds to the plain instance `start` runs.
#[derive(Clone, Copy, Default)]
pub struct DovecotOptions<'a> {
    /// `ssl = yes` with a leaf for `127.0.0.1`/`localhost` from this CA: IMAPS and POP3S
    /// listeners on their own ports, STARTTLS/STLS on the plain ones (cleartext logins still
    /// work there). ManageSieve offers STARTTLS too.
    pub tls: Option<&'a TestPki>,
    /// Master users as `(name, password)`: `alice@example.test%admin` with admin's password
    /// logs in as alice (`auth_master_user_separator = %`).
    pub master_users: &'a [(&'a str, &'a str)],
    /// Appended to dovecot.conf verbatim (see [`Dovecot::start_with`]).
    pub extra_conf: &'a str,
}

/// A running (or stopped) Dovecot. Dropping it stops the master and deletes all its files.
pub struct Dovecot {
    binary: PathBuf,
    conf: PathBuf,
    ports: Ports,
    features: Features,
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

    /// Like [`Dovecot::start`], with a message `on <name>` in every user's INBOX, so the
    /// subject a client sees proves which backend it reached.
    pub fn start_marked(users: &[(&str, &str)], name: &str) -> Result<Self> {
        let dovecot = Self::start(users)?;
        for (user, _) in users {
            dovecot.deliver(user, &format!("on {name}"))?;
        }
        Ok(dovecot)
    }

    /// Like [`Dovecot::start`], appending `extra_conf` to dovecot.conf (Dovecot merges repeated
    /// sections, so this can also switch on e.g. `haproxy = yes` for the imap listener).
    pub fn start_with(users: &[(&str, &str)], extra_conf: &str) -> Result<Self> {
        Self::start_with_options(users, &DovecotOptions { extra_conf, ..DovecotOptions::default() })
    }

    /// Like [`Dovecot::start`] with TLS from `pki` (see [`DovecotOptions::tls`]).
    pub fn start_tls(users: &[(&str, &str)], pki: &TestPki) -> Result<Self> {
        Self::start_with_options(users, &DovecotOptions { tls: Some(pki), ..DovecotOptions::default() })
    }

    /// The general form of every `start*`.
    pub fn start_with_options(users: &[(&str, &str)], options: &DovecotOptions<'_>) -> Result<Self> {
        let binary = find_binary("dovecot").context("dovecot is not installed (scripts/install-deps.sh)")?;
        let dir = tempfile::Builder::new().prefix("switchyard-dovecot-").tempdir()?;
        // Auth runs as `dovecot` and mail processes as the mail uid: both must traverse this.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let id = Identity::current()?;
        write_users(dir.path(), users, &id)?;
        let features = Features { tls: options.tls.is_some(), master_users: !options.master_users.is_empty() };
        if let Some(pki) = options.tls {
            // Copies, not paths into the PKI's temp dir: a restart re-reads them, and the
            // `TestPki` may be gone by then.
            let (cert, key) = pki.issue(&["127.0.0.1", "localhost"])?;
            fs::create_dir_all(dir.path().join("tls"))?;
            fs::copy(cert, dir.path().join("tls/cert.pem"))?;
            fs::copy(key, dir.path().join("tls/key.pem"))?;
        }
        let masters: String =
            options.master_users.iter().map(|(name, pass)| format!("{name}:{{PLAIN}}{pass}\n")).collect();
        fs::write(dir.path().join("masters"), masters)?;
        let instance = format!("switchyard-{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed));
        let conf = dir.path().join("dovecot.conf");
        let (ports, master) = start_with_retry("Dovecot", &dir.path().join("dovecot.log"), Retry::FRESH_PORTS, || {
            let ports = Ports::allocate()?;
            let text = dovecot_conf::render(dir.path(), &instance, ports, &id, features, options.extra_conf);
            fs::write(&conf, text)?;
            launch(&binary, &conf, dir.path(), ports.imap).map(|master| (ports, master))
        })?;
        Ok(Self { binary, conf, ports, features, master: Some(master), dir })
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
    /// Implicit-TLS IMAP. Panics unless started with TLS.
    pub fn imaps_port(&self) -> u16 {
        assert!(self.features.tls, "this Dovecot was started without TLS (use Dovecot::start_tls)");
        self.ports.imaps
    }
    /// Implicit-TLS POP3. Panics unless started with TLS.
    pub fn pop3s_port(&self) -> u16 {
        assert!(self.features.tls, "this Dovecot was started without TLS (use Dovecot::start_tls)");
        self.ports.pop3s
    }
    /// The server certificate (PEM) when started with TLS, e.g. to pin its SHA-256.
    pub fn tls_cert_path(&self) -> Option<PathBuf> {
        self.features.tls.then(|| self.dir.path().join("tls/cert.pem"))
    }
    /// `user%master`: the login name that makes `master` (a master user) log in as `user`.
    pub fn master_login(user: &str, master: &str) -> String {
        format!("{user}{MASTER_USER_SEPARATOR}{master}")
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
    pub fn imaps_addr(&self) -> SocketAddr {
        addr(self.imaps_port())
    }
    pub fn pop3s_addr(&self) -> SocketAddr {
        addr(self.pop3s_port())
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
        let master = start_with_retry("Dovecot", &self.log_path(), Retry::SAME_PORTS, || {
            launch(&self.binary, &self.conf, self.dir.path(), self.ports.imap)
        })?;
        self.master = Some(master);
        Ok(())
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
    poll_ready(&format!("Dovecot's IMAP on {imap}"), READY_TIMEOUT, Duration::from_millis(200), || {
        if let Some(status) = master.try_wait()? {
            bail!("dovecot exited with {status} before accepting connections");
        }
        Ok(match read_greeting(imap) {
            Ok(line) if line.starts_with("* OK") => None,
            Ok(line) => Some(format!("unexpected greeting {line:?}")),
            Err(err) => Some(format!("{err:#}")),
        })
    })
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
        // Dovecot's master ends its shutdown by sending SIGQUIT to the log process and then
        // sleeping a fixed second (measured with strace). Once the log process is its only
        // child, every listener is closed and the sleep is all that is left: cut it short,
        // which saves a second per instance in every test.
        if only_log_process_left(master.id()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    master.kill()?;
    master.wait()?;
    Ok(())
}

/// Whether the master's sole remaining child is its log process (whose title ends in
/// `/log`), read from /proc; false whenever that cannot be told.
fn only_log_process_left(master: u32) -> bool {
    let Ok(children) = fs::read_to_string(format!("/proc/{master}/task/{master}/children")) else {
        return false;
    };
    let children: Vec<&str> = children.split_whitespace().collect();
    let [child] = children.as_slice() else {
        return false;
    };
    fs::read(format!("/proc/{child}/cmdline"))
        .is_ok_and(|title| title.split(|&b| b == 0).next().is_some_and(|t| t.ends_with(b"/log")))
}
