//! End to end: POP3 and ManageSieve through a real node to two real Dovecot servers
//! (`legacy`, the default, and `new`). Every account has a different message on each
//! server, so the subject a client retrieves proves which backend it reached; Sieve
//! scripts written through the proxy are looked up on each server directly.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use base64::Engine;
use switchyard_tests::fleet::Fleet;
use switchyard_tests::{require_or_skip, run_client, Dovecot};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const USERS: &[(&str, &str)] = &[("alice@example.test", "alicepw"), ("bob@example.test", "bobpw")];
const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Fixture {
    legacy: Dovecot,
    new: Dovecot,
    fleet: Fleet,
}

/// Both servers, a control plane declaring them, one node with a POP3 and a ManageSieve
/// listener, and alice mapped to `new` (bob stays on the default, `legacy`).
async fn fixture() -> Result<Fixture> {
    let (legacy, new) = (Dovecot::start_marked(USERS, "legacy")?, Dovecot::start_marked(USERS, "new")?);
    let fleet = Fleet::builder()
        .dovecot("legacy", &legacy, &["pop3", "managesieve"])
        .dovecot("new", &new, &["pop3", "managesieve"])
        .listener("pop3", "pop3")
        .listener("sieve", "managesieve")
        .map("alice@example.test", "new")
        .start()
        .await?;
    Ok(Fixture { legacy, new, fleet })
}

/// Python's poplib (USER/PASS): the Subject of every message, or the error text.
const POPLIB: &str = r#"
import poplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user(user)
    pop.pass_(password)
    count, _ = pop.stat()
    subjects = []
    for i in range(1, count + 1):
        for line in pop.retr(i)[1]:
            text = line.decode(errors="replace")
            if text.lower().startswith("subject:"):
                subjects.append(text[len("subject:"):].strip())
    pop.quit()
    print("\n".join(subjects))
except Exception as err:
    print(f"{type(err).__name__}: {err}")
    sys.exit(1)
"#;

async fn poplib(addr: SocketAddr, user: &str, pass: &str) -> Result<(bool, String)> {
    run_client("python3", ["-c", POPLIB, &addr.port().to_string(), user, pass]).await
}

/// curl's POP3 client: it authenticates with SASL when CAPA offers it.
async fn curl_pop3(addr: SocketAddr, path: &str, user: &str, pass: &str) -> Result<(bool, String)> {
    let url = format!("pop3://{addr}/{path}");
    run_client("curl", ["-sS", "--max-time", "20", &url, "--user", &format!("{user}:{pass}")]).await
}

/// A line-oriented client for hand-written POP3 and ManageSieve conversations.
struct Wire(BufReader<TcpStream>);

impl Wire {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Wire(BufReader::new(TcpStream::connect(addr).await?)))
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        Ok(self.0.get_mut().write_all(text.as_bytes()).await?)
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.0.read_line(&mut line)).await??;
        ensure!(n > 0, "connection closed");
        Ok(line)
    }

    /// A ManageSieve response: lines (with their literals) through the `OK`/`NO`/`BYE` line.
    async fn sieve_response(&mut self) -> Result<String> {
        let mut text = String::new();
        loop {
            let line = self.line().await?;
            text.push_str(&line);
            if let Some(size) = line.trim_end().strip_suffix('}').and_then(|l| l.rsplit_once('{')) {
                let mut body = vec![0; size.1.trim_end_matches('+').parse()?];
                tokio::time::timeout(IO_TIMEOUT, self.0.read_exact(&mut body)).await??;
                text.push_str(&String::from_utf8_lossy(&body));
                continue;
            }
            if ["OK", "NO", "BYE"].iter().any(|s| line.starts_with(s)) {
                return Ok(text);
            }
        }
    }

    /// Connects to a ManageSieve server and authenticates with PLAIN, as a literal when
    /// `literal` is set; returns the verdict line(s).
    async fn sieve_login(addr: SocketAddr, user: &str, pass: &str, literal: bool) -> Result<(Self, String)> {
        let mut wire = Wire::connect(addr).await?;
        let greeting = wire.sieve_response().await?;
        ensure!(greeting.contains("\"SASL\"") && greeting.starts_with('"'), "{greeting}");
        let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let arg = if literal { format!("{{{}+}}\r\n{plain}", plain.len()) } else { format!("\"{plain}\"") };
        wire.send(&format!("AUTHENTICATE \"PLAIN\" {arg}\r\n")).await?;
        let verdict = wire.sieve_response().await?;
        Ok((wire, verdict))
    }
}

/// The script names LISTSCRIPTS shows for `user` directly on a server.
async fn scripts_on(server: SocketAddr, user: &str, pass: &str) -> Result<String> {
    let (mut wire, verdict) = Wire::sieve_login(server, user, pass, false).await?;
    ensure!(verdict.starts_with("OK"), "{verdict}");
    wire.send("LISTSCRIPTS\r\n").await?;
    wire.sieve_response().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_logins_reach_the_mapped_server() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture().await?;
    let pop3 = f.fleet.node().addr("pop3");

    let (ok, text) = poplib(pop3, "alice@example.test", "alicepw").await?;
    assert!(ok, "{text}");
    assert_eq!(text, "on new");
    let (ok, text) = poplib(pop3, "Bob@Example.test", "bobpw").await?;
    assert!(ok, "{text}");
    assert_eq!(text, "on legacy");

    // curl lists, then retrieves over SASL.
    let (ok, listing) = curl_pop3(pop3, "", "alice@example.test", "alicepw").await?;
    assert!(ok && listing.starts_with("1 "), "{listing}");
    let (ok, message) = curl_pop3(pop3, "1", "alice@example.test", "alicepw").await?;
    assert!(ok && message.contains("Subject: on new"), "{message}");
    let (ok, message) = curl_pop3(pop3, "1", "bob@example.test", "bobpw").await?;
    assert!(ok && message.contains("Subject: on legacy"), "{message}");

    // AUTH with an initial response, the backend's refusal relayed as it was sent.
    let mut wire = Wire::connect(pop3).await?;
    assert_eq!(wire.line().await?, "+OK Switchyard ready\r\n");
    let wrong = base64::engine::general_purpose::STANDARD.encode("\0alice@example.test\0wrong");
    wire.send(&format!("AUTH PLAIN {wrong}\r\n")).await?;
    let refused = wire.line().await?;
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    let right = base64::engine::general_purpose::STANDARD.encode("\0alice@example.test\0alicepw");
    wire.send(&format!("AUTH PLAIN {right}\r\nSTAT\r\n")).await?;
    let verdict = wire.line().await?;
    assert!(verdict.starts_with("+OK"), "{verdict}");
    let stat = wire.line().await?;
    assert!(stat.starts_with("+OK 1 "), "the pipelined STAT reached the backend: {stat}");
    drop(f.legacy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sieve_scripts_land_on_the_mapped_server() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture().await?;
    let sieve = f.fleet.node().addr("sieve");

    let (_, refused) = Wire::sieve_login(sieve, "alice@example.test", "wrong", false).await?;
    assert!(refused.starts_with("NO"), "{refused}");

    let (mut wire, verdict) = Wire::sieve_login(sieve, "alice@example.test", "alicepw", true).await?;
    assert!(verdict.starts_with("OK"), "{verdict}");
    let script = "require \"fileinto\";\r\nkeep;\r\n";
    wire.send(&format!("PUTSCRIPT \"switchyard\" {{{}+}}\r\n{script}\r\n", script.len())).await?;
    let put = wire.sieve_response().await?;
    assert!(put.starts_with("OK"), "{put}");
    wire.send("GETSCRIPT \"switchyard\"\r\n").await?;
    let got = wire.sieve_response().await?;
    assert!(got.contains(script) && got.ends_with("OK \"Getscript completed.\"\r\n"), "{got}");
    wire.send("LOGOUT\r\n").await?;

    let (mut wire, verdict) = Wire::sieve_login(sieve, "bob@example.test", "bobpw", false).await?;
    assert!(verdict.starts_with("OK"), "{verdict}");
    wire.send("PUTSCRIPT \"bobs\" {6+}\r\nkeep;\n\r\n").await?;
    let put = wire.sieve_response().await?;
    assert!(put.starts_with("OK"), "{put}");

    let on_new = scripts_on(f.new.sieve_addr(), "alice@example.test", "alicepw").await?;
    assert!(on_new.contains("\"switchyard\""), "{on_new}");
    let on_legacy = scripts_on(f.legacy.sieve_addr(), "alice@example.test", "alicepw").await?;
    assert!(!on_legacy.contains("switchyard"), "{on_legacy}");
    let bob_legacy = scripts_on(f.legacy.sieve_addr(), "bob@example.test", "bobpw").await?;
    assert!(bob_legacy.contains("\"bobs\""), "{bob_legacy}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_destination_is_a_temporary_failure_for_both_protocols() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let mut f = fixture().await?;
    f.new.stop()?;

    let mut pop = Wire::connect(f.fleet.node().addr("pop3")).await?;
    pop.line().await?;
    pop.send("USER alice@example.test\r\nPASS alicepw\r\n").await?;
    pop.line().await?;
    let reply = pop.line().await?;
    assert_eq!(reply, "-ERR [SYS/TEMP] Backend temporarily unavailable, try again later\r\n");

    let (_, reply) = Wire::sieve_login(f.fleet.node().addr("sieve"), "alice@example.test", "alicepw", false).await?;
    assert_eq!(reply, "NO (TRYLATER) \"Backend temporarily unavailable, try again later\"\r\n");

    // bob's destination is up: his login still works.
    let (ok, text) = poplib(f.fleet.node().addr("pop3"), "bob@example.test", "bobpw").await?;
    if !ok {
        bail!("bob on legacy: {text}");
    }
    assert_eq!(text, "on legacy");
    Ok(())
}
