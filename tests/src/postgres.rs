//! A real PostgreSQL server per test: `initdb` into a temp dir, `postgres` on an OS-chosen
//! port on 127.0.0.1 (trust authentication, `fsync = off` for speed), databases created on
//! demand, stop and restart on the same port and data, stopped on drop.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the server and `initdb`
//! run as the `postgres` user, which then owns the temp dir. Clients (`psql`, `pg_isready`)
//! connect over TCP as the `postgres` role. Like the Dovecot harness the API is synchronous;
//! it only waits on child processes.
//!
//! ```ignore
//! if !switchyard_tests::postgres::require_or_skip() { return Ok(()); }
//! let pg = Postgres::start()?;
//! let url = pg.fresh_database("contract")?;
//! ```

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::retry::{poll_ready, start_with_retry, Retry};
use crate::util::{find_binary, free_port, real_servers_required};

const HOST: &str = "127.0.0.1";
/// The superuser role `initdb` creates, and the OS user it runs as under root.
const SUPERUSER: &str = "postgres";
/// The database [`Postgres::url`] names, created at start.
const DEFAULT_DATABASE: &str = "switchyard";
/// Start-up normally takes well under a second; a loaded CI machine may need more.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace for a fast shutdown before an immediate one.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The binaries the harness runs, all from one installation.
const BINARIES: [&str; 4] = ["initdb", "postgres", "pg_isready", "psql"];

/// Whether PostgreSQL is installed. Missing: panics in CI (or with
/// `SWITCHYARD_REQUIRE_REAL_SERVERS=1`), otherwise prints a SKIP line and returns false,
/// like [`crate::require_or_skip`] (PostgreSQL's binaries are not on `PATH` on Debian).
pub fn require_or_skip() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if real_servers_required() {
        panic!(
            "PostgreSQL is not installed, but real servers are required here \
             (CI=true or SWITCHYARD_REQUIRE_REAL_SERVERS=1); run scripts/install-deps.sh"
        );
    }
    eprintln!("SKIP: PostgreSQL not installed (run scripts/install-deps.sh)");
    false
}

/// The directory holding every binary in [`BINARIES`]: the newest
/// `/usr/lib/postgresql/<version>/bin`, else wherever `initdb` is on `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| BINARIES.iter().all(|b| dir.join(b).is_file());
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .chain(find_binary("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
        .find(|dir| complete(dir))
}

/// A running (or stopped) PostgreSQL server. Dropping it stops the server and deletes
/// its data.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    /// uid and gid to run the server as (set when the tests run as root).
    run_as: Option<(u32, u32)>,
    server: Option<Child>,
    // Last field so it is deleted only after `Drop` has stopped the server.
    dir: TempDir,
}

impl Postgres {
    /// Initializes a cluster, starts it and creates the database [`Postgres::url`] names.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`] with extra `-c name=value` server settings, which override
    /// the harness's own (e.g. `("fsync", "on")` to measure with durable commits).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self> {
        let bin = bin_dir().context("PostgreSQL is not installed (scripts/install-deps.sh)")?;
        let dir = tempfile::Builder::new().prefix("switchyard-postgres-").tempdir()?;
        let run_as = if rustix::process::geteuid().is_root() { Some(system_user(SUPERUSER)?) } else { None };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut all = vec![("listen_addresses", "127.0.0.1"), ("fsync", "off")];
        all.extend_from_slice(settings);
        let mut pg = Postgres {
            bin,
            port: 0,
            settings: all.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            run_as,
            server: None,
            dir,
        };
        pg.initdb()?;
        let log = pg.log_path();
        start_with_retry("PostgreSQL", &log, Retry::FRESH_PORTS, || {
            pg.port = free_port();
            pg.launch()
        })?;
        pg.create_database(DEFAULT_DATABASE, "")?;
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/switchyard`.
    pub fn url(&self) -> String {
        self.database_url(DEFAULT_DATABASE)
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{database}", self.port)
    }

    /// Creates the empty database `name` (letters, digits, `_`) and returns its URL.
    pub fn fresh_database(&self, name: &str) -> Result<String> {
        self.create_database(name, "")?;
        Ok(self.database_url(name))
    }

    /// Like [`Postgres::fresh_database`], with an ICU default collation such as `en-US`
    /// (where `a` sorts before `B`, unlike byte order).
    pub fn fresh_database_icu(&self, name: &str, icu_locale: &str) -> Result<String> {
        ensure!(icu_locale.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "odd ICU locale {icu_locale:?}");
        self.create_database(name, &format!("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'"))?;
        Ok(self.database_url(name))
    }

    /// Runs `sql` in `database` with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER, "-d", database])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        ensure!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// `database` as a plain SQL dump that drops and recreates every object it holds
    /// (`pg_dump --clean --if-exists`): restoring it puts the database back as it is now.
    pub fn dump(&self, database: &str) -> Result<String> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER, "-d", database])
            .args(["--clean", "--if-exists", "--no-owner"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_dump")?;
        ensure_success("pg_dump", &out)?;
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Restores a [`Postgres::dump`] into `database` (which may be in use), in one transaction.
    pub fn restore(&self, database: &str, dump: &str) -> Result<()> {
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER, "-d", database])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        std::io::Write::write_all(&mut stdin, dump.as_bytes())?;
        drop(stdin);
        ensure_success("restoring the dump with psql", &child.wait_with_output()?)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Fast shutdown (sessions are ended, as a crashed or stopped server would), then
    /// waits for the server to exit. A no-op when already stopped.
    pub fn stop(&mut self) -> Result<()> {
        match self.server.take() {
            Some(server) => terminate(server),
            None => Ok(()),
        }
    }

    /// Starts again on the same port with the same data (stopping first if needed).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let log = self.log_path();
        start_with_retry("PostgreSQL", &log, Retry::SAME_PORTS, || self.launch())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server-side binaries, as the `postgres` user under root.
    fn server_command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(binary));
        // The server user may not be allowed into the test's working directory.
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) -> Result<()> {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
            .output()
            .context("running initdb")?;
        ensure_success("initdb", &out)
    }

    /// Spawns the server and waits until it accepts queries; on failure the child is
    /// stopped and the error carries the log's tail.
    fn launch(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(self.log_path())?;
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D").arg(self.data_dir()).arg("-p").arg(self.port.to_string()).arg("-k").arg(self.dir.path());
        for (name, value) in &self.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        let mut server = cmd.stdout(log.try_clone()?).stderr(log).spawn().context("spawning postgres")?;
        match self.wait_ready(&mut server) {
            Ok(()) => {
                self.server = Some(server);
                Ok(())
            }
            Err(err) => {
                let _ = terminate(server);
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(err.context(format!("PostgreSQL did not become ready.\nlog tail:\n{}", tail.join("\n"))))
            }
        }
    }

    /// Asks `pg_isready` (a real connection attempt) with a short backoff.
    fn wait_ready(&self, server: &mut Child) -> Result<()> {
        let what = format!("PostgreSQL on port {}", self.port);
        poll_ready(&what, READY_TIMEOUT, Duration::from_millis(200), || {
            if let Some(status) = server.try_wait()? {
                bail!("postgres exited with {status} before accepting connections");
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", HOST, "-p", &self.port.to_string(), "-U", SUPERUSER, "-d", "postgres"])
                .status()
                .context("running pg_isready")?;
            Ok((!ready.success()).then(|| format!("pg_isready: {ready}")))
        })
    }

    fn create_database(&self, name: &str, options: &str) -> Result<()> {
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database names here are [a-z0-9_]+, not {name:?}"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} {options}")).map(drop)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = terminate(server);
        }
    }
}

/// SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave);
/// SIGQUIT (immediate) if that takes too long, SIGKILL as the last resort.
fn terminate(mut server: Child) -> Result<()> {
    let pid = rustix::process::Pid::from_child(&server);
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::QUIT] {
        if server.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = rustix::process::kill_process(pid, signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if server.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    server.kill()?;
    server.wait()?;
    Ok(())
}

/// uid and gid of `name` from /etc/passwd.
fn system_user(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == name)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .with_context(|| format!("PostgreSQL will not run as root and there is no {name:?} user to run it as"))
}

fn ensure_success(what: &str, out: &Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
