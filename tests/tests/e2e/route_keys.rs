//! End to end: which account a login or a recipient is routed by (SPEC §2.1 step 4).
//! Two real Dovecot servers (`legacy`, the default, and `new`) with a master passdb
//! (`admin`, `auth_master_user_separator = %`); alice is mapped to `new`. A SASL PLAIN
//! login with authzid `alice` and authcid `admin` opens alice's mailbox, so it must be
//! routed by alice, in every protocol; recipients follow their subaddress-free account and
//! are never cut at the master-user separator; the file store keys its lines the same way.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use serde_json::json;
use switchyard_tests::config::{Destination, MappingStore};
use switchyard_tests::fleet::{ControlPlane, Fleet, Node};
use switchyard_tests::{
    inbox_of, python_lmtp_send, require_or_skip, sieve_status, status, until_in_inbox, Dovecot, DovecotOptions,
    ImapClient, Postfix, SieveClient,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ALICE: (&str, &str) = ("alice@example.test", "alicepw");
const USERS: &[(&str, &str)] = &[ALICE, ("bob@example.test", "bobpw"), ("a%b@example.test", "percentpw")];
const MASTER: (&str, &str) = ("admin", "adminpw");
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Postfix queues a submitted message and delivers it a moment later.
const DELIVERY: Duration = Duration::from_secs(20);

/// One backend: a Dovecot (with the master user when asked) and, if needed, its Postfix.
struct Server {
    dovecot: Dovecot,
    postfix: Option<Postfix>,
}

struct Fixture {
    legacy: Server,
    new: Server,
    cp: ControlPlane,
    node: Node,
}

/// How a fixture is built.
#[derive(Clone, Copy, Default)]
struct Setup<'a> {
    master_users: bool,
    postfix: bool,
    /// The `[mapping]` tables; `None` is a SQLite store with alice → new.
    mapping: Option<&'a str>,
    /// Extra `[routing]` keys, one per line.
    routing: &'a str,
}

fn server(setup: Setup<'_>, name: &str) -> Result<Server> {
    let masters = [MASTER];
    // Dovecot's default auth_username_chars refuses `%` (a%b is a legal local part); `-`
    // as a second delimiter serves the test of a configured routing.recipient_delimiter.
    let options = DovecotOptions {
        master_users: if setup.master_users { &masters } else { &[] },
        extra_conf: "auth_username_chars =\nrecipient_delimiter = +-",
        ..Default::default()
    };
    let dovecot = Dovecot::start_with_options(USERS, &options)?;
    for (user, _) in &USERS[..2] {
        dovecot.deliver(user, &format!("on {name}"))?;
    }
    let postfix = if setup.postfix { Some(Postfix::start(&dovecot)?) } else { None };
    Ok(Server { dovecot, postfix })
}

/// Both servers, a control plane declaring every protocol of theirs, one node with a
/// listener of each protocol.
async fn fixture(setup: Setup<'_>) -> Result<Fixture> {
    let (legacy, new) = (server(setup, "legacy")?, server(setup, "new")?);
    let endpoints = |s: &Server| {
        let d = &s.dovecot;
        let submission = s.postfix.as_ref().map_or_else(switchyard_tests::free_port, |p| p.submission_port());
        [
            ("imap", d.imap_port()),
            ("pop3", d.pop3_port()),
            ("managesieve", d.sieve_port()),
            ("lmtp", d.lmtp_port()),
            ("submission", submission),
        ]
    };
    let mut builder = Fleet::builder()
        .destination(Destination::new("legacy").endpoints(&endpoints(&legacy)))
        .destination(Destination::new("new").endpoints(&endpoints(&new)))
        .routing(setup.routing);
    for (id, protocol) in [("imap", "imap"), ("pop3", "pop3"), ("sieve", "managesieve"), ("lmtp", "lmtp")] {
        builder = builder.listener(id, protocol);
    }
    builder = builder.listener("submission", "submission");
    builder = match setup.mapping {
        Some(tables) => builder.store(MappingStore::Tables(tables.to_string())),
        None => builder.map("alice@example.test", "new"),
    };
    let Fleet { cp, mut nodes, .. } = builder.start().await?;
    Ok(Fixture { legacy, new, cp, node: nodes.remove(0) })
}

/// A SASL PLAIN message (RFC 4616), base64: `authzid NUL authcid NUL password`.
fn plain(authzid: &str, authcid: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{authzid}\0{authcid}\0{password}"))
}

/// The PLAIN message of admin opening alice's mailbox (how imapsync `--authuser` logs in).
fn admin_as_alice() -> String {
    plain(ALICE.0, MASTER.0, MASTER.1)
}

/// `AUTHENTICATE PLAIN` with `token` (SASL-IR, or after the `+` continuation), then the
/// INBOX subjects: which server's alice the login opened.
async fn imap_plain(addr: SocketAddr, token: &str, sasl_ir: bool) -> Result<Vec<String>> {
    let mut imap = ImapClient::connect(addr).await?;
    let tagged = if sasl_ir {
        imap.command(&format!("AUTHENTICATE PLAIN {token}")).await?.1
    } else {
        imap.write_line("a1 AUTHENTICATE PLAIN").await?;
        let go_ahead = imap.read_line().await?;
        ensure!(go_ahead.starts_with('+'), "no continuation: {go_ahead}");
        imap.write_line(token).await?;
        loop {
            let line = imap.read_line().await?;
            if line.starts_with("a1 ") {
                break line;
            }
        }
    };
    ensure!(status(&tagged) == "OK", "AUTHENTICATE PLAIN refused: {tagged}");
    let subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    Ok(subjects)
}

/// A CRLF line client for the POP3 and SMTP exchanges written out here by hand.
struct Wire(BufReader<TcpStream>);

impl Wire {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Wire(BufReader::new(TcpStream::connect(addr).await?)))
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.0.read_line(&mut line)).await??;
        ensure!(n > 0, "connection closed");
        Ok(line.trim_end().to_string())
    }

    /// Sends `command` and reads one reply; for SMTP, through its last (`NNN `) line.
    async fn ask(&mut self, command: &str) -> Result<String> {
        self.0.get_mut().write_all(format!("{command}\r\n").as_bytes()).await?;
        self.reply().await
    }

    async fn reply(&mut self) -> Result<String> {
        let mut text = self.line().await?;
        while text.lines().last().is_some_and(|l| l.len() > 3 && l.as_bytes()[3] == b'-') {
            text = format!("{text}\n{}", self.line().await?);
        }
        Ok(text)
    }
}

/// POP3 `AUTH PLAIN <token>`, then the Subject of message 1.
async fn pop3_plain_subject(addr: SocketAddr, token: &str) -> Result<String> {
    let mut pop = Wire::connect(addr).await?;
    let greeting = pop.line().await?;
    ensure!(greeting.starts_with("+OK"), "{greeting}");
    let verdict = pop.ask(&format!("AUTH PLAIN {token}")).await?;
    ensure!(verdict.starts_with("+OK"), "AUTH PLAIN refused: {verdict}");
    let retr = pop.ask("RETR 1").await?;
    ensure!(retr.starts_with("+OK"), "{retr}");
    let mut subject = String::new();
    loop {
        let line = pop.line().await?;
        if line == "." {
            break;
        }
        if let Some(s) = line.strip_prefix("Subject: ") {
            subject = s.to_string();
        }
    }
    pop.ask("QUIT").await?;
    Ok(subject)
}

/// Submission: `AUTH PLAIN <token>`, then one message from and to alice.
async fn submit_plain(addr: SocketAddr, token: &str, subject: &str) -> Result<()> {
    let mut smtp = Wire::connect(addr).await?;
    let greeting = smtp.reply().await?;
    ensure!(greeting.starts_with("220"), "{greeting}");
    ensure!(smtp.ask("EHLO client.example.test").await?.starts_with("250"));
    let auth = smtp.ask(&format!("AUTH PLAIN {token}")).await?;
    ensure!(auth.starts_with("235"), "AUTH PLAIN refused: {auth}");
    for command in [format!("MAIL FROM:<{}>", ALICE.0), format!("RCPT TO:<{}>", ALICE.0)] {
        let reply = smtp.ask(&command).await?;
        ensure!(reply.starts_with("250"), "{command}: {reply}");
    }
    ensure!(smtp.ask("DATA").await?.starts_with("354"));
    let message = format!("From: {a}\r\nTo: {a}\r\nSubject: {subject}\r\n\r\nhello\r\n.", a = ALICE.0);
    let queued = smtp.ask(&message).await?;
    ensure!(queued.starts_with("250"), "{queued}");
    smtp.ask("QUIT").await?;
    Ok(())
}

fn password(user: &str) -> Result<&'static str> {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).context("unknown user")
}

/// The INBOX subjects of `user` read directly on `server` (a plain login by the user).
async fn inbox(server: &Server, user: &str) -> Result<Vec<String>> {
    inbox_of(server.dovecot.imap_addr(), user, password(user)?).await
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// alice's Sieve script names, read directly on `server`.
async fn scripts(server: &Server) -> Result<Vec<String>> {
    let mut sieve = SieveClient::connect(server.dovecot.sieve_addr()).await?;
    let verdict = sieve.authenticate_plain(ALICE.0, ALICE.1).await?;
    ensure!(sieve_status(&verdict) == "OK", "{verdict}");
    let names = sieve.list_scripts().await?.into_iter().map(|(name, _)| name).collect();
    sieve.logout().await?;
    Ok(names)
}

/// Waits until `subject` is in `user`'s INBOX on `server`.
async fn arrives(server: &Server, user: &str, subject: &str) -> Result<()> {
    until_in_inbox(server.dovecot.imap_addr(), (user, password(user)?), subject, DELIVERY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_plain_with_an_authzid_is_routed_by_the_account_it_opens() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(Setup { master_users: true, ..Setup::default() }).await?;
    // The real backend opens alice's mailbox for admin's authzid login.
    assert_eq!(imap_plain(f.new.dovecot.imap_addr(), &admin_as_alice(), true).await?, ["on new"]);
    assert_eq!(imap_plain(f.legacy.dovecot.imap_addr(), &admin_as_alice(), true).await?, ["on legacy"]);

    let proxy = f.node.addr("imap");
    // The master-user separator in the login name, and PLAIN without an authzid (the
    // authcid is the account): as before.
    let login = Dovecot::master_login(ALICE.0, MASTER.0);
    assert_eq!(switchyard_tests::inbox_subjects(proxy, &login, MASTER.1).await?, Ok(vec!["on new".to_string()]));
    assert_eq!(imap_plain(proxy, &plain("", ALICE.0, ALICE.1), true).await?, ["on new"]);
    assert_eq!(imap_plain(proxy, &plain("", "bob@example.test", "bobpw"), true).await?, ["on legacy"]);
    // With an authzid, the authzid is the account.
    assert_eq!(imap_plain(proxy, &admin_as_alice(), true).await?, ["on new"], "SASL-IR");
    assert_eq!(imap_plain(proxy, &admin_as_alice(), false).await?, ["on new"], "continuation");
    let mixed_case = plain("Alice@Example.TEST", MASTER.0, MASTER.1);
    assert_eq!(imap_plain(proxy, &mixed_case, true).await?, ["on new"], "the authzid is normalized");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_and_managesieve_plain_with_an_authzid_reach_the_accounts_server() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(Setup { master_users: true, ..Setup::default() }).await?;
    assert_eq!(pop3_plain_subject(f.new.dovecot.pop3_addr(), &admin_as_alice()).await?, "on new");
    assert_eq!(pop3_plain_subject(f.node.addr("pop3"), &admin_as_alice()).await?, "on new");

    // ManageSieve: a script uploaded through the proxy as admin-for-alice is alice's on `new`.
    let mut sieve = SieveClient::connect(f.node.addr("sieve")).await?;
    let (_, verdict) = sieve.command(&format!("AUTHENTICATE \"PLAIN\" \"{}\"", admin_as_alice())).await?;
    ensure!(sieve_status(&verdict) == "OK", "AUTHENTICATE refused: {verdict}");
    let put = sieve.put_script("via-proxy", "keep;\r\n").await?;
    ensure!(sieve_status(&put) == "OK", "{put}");
    sieve.logout().await?;
    assert_eq!(scripts(&f.new).await?, ["via-proxy"]);
    assert!(scripts(&f.legacy).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_plain_with_an_authzid_goes_to_the_accounts_postfix() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") {
        return Ok(());
    }
    let f = fixture(Setup { master_users: true, postfix: true, ..Setup::default() }).await?;
    let new_postfix = f.new.postfix.as_ref().context("no postfix")?.submission_addr();
    submit_plain(new_postfix, &admin_as_alice(), "direct").await?;
    arrives(&f.new, ALICE.0, "direct").await?;

    submit_plain(f.node.addr("submission"), &admin_as_alice(), "through the proxy").await?;
    let landed = arrives(&f.new, ALICE.0, "through the proxy").await;
    assert!(landed.is_ok(), "not on new ({landed:?}); alice on legacy has {:?}", inbox(&f.legacy, ALICE.0).await?);
    assert!(!inbox(&f.legacy, ALICE.0).await?.iter().any(|s| s == "through the proxy"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmtp_subaddress_follows_its_accounts_route() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(Setup::default()).await?;
    let port = f.node.addr("lmtp").port();
    // Dovecot's own recipient_delimiter files alice+tag under alice.
    let (ok, text) = python_lmtp_send(port, "sender@example.org", &["alice+tag@example.test"], "tagged").await?;
    assert!(ok, "{text}");
    let (on_new, on_legacy) = (inbox(&f.new, ALICE.0).await?, inbox(&f.legacy, ALICE.0).await?);
    assert_eq!((on_new, on_legacy), (strings(&["on new", "tagged"]), strings(&["on legacy"])), "(new, legacy)");
    Ok(())
}

/// The control plane's `routing.recipient_delimiter` reaches the node in the fleet
/// settings: with `"-"`, `alice-list` is alice's while `alice+tag` is an address of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_recipient_delimiter_is_the_one_nodes_cut_at() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(Setup { routing: "recipient_delimiter = \"-\"", ..Setup::default() }).await?;
    let port = f.node.addr("lmtp").port();
    for (rcpt, subject) in [("alice-list@example.test", "dash"), ("alice+tag@example.test", "plus")] {
        let (ok, text) = python_lmtp_send(port, "sender@example.org", &[rcpt], subject).await?;
        assert!(ok, "{text}");
    }
    let (on_new, on_legacy) = (inbox(&f.new, ALICE.0).await?, inbox(&f.legacy, ALICE.0).await?);
    assert_eq!((on_new, on_legacy), (strings(&["on new", "dash"]), strings(&["on legacy", "plus"])), "(new, legacy)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmtp_recipient_is_never_cut_at_the_master_user_separator() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let f = fixture(Setup::default()).await?;
    // `a%b` is a legal local part, not a master login: its key is the whole address, which
    // has no mapping (default: legacy), whatever the bare login name `a` is mapped to.
    let (code, put) = f.cp.api().put("/mappings/a", json!({"destination": "new"})).await?;
    ensure!(code == 200, "{put}");
    let port = f.node.addr("lmtp").port();
    let (ok, text) = python_lmtp_send(port, "sender@example.org", &["a%b@example.test"], "percent").await?;
    assert!(ok, "{text}");
    let (on_new, on_legacy) = (inbox(&f.new, "a%b@example.test").await?, inbox(&f.legacy, "a%b@example.test").await?);
    assert_eq!((on_new, on_legacy), (strings(&[]), strings(&["percent"])), "(new, legacy)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_keys_its_lines_like_logins_are_keyed() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mappings.tsv");
    std::fs::write(&path, "# an operator's export, mixed case, master login\nAlice@Example.TEST%admin\tnew\n")?;
    let mapping = format!("[mapping]\nsource = \"file\"\n[mapping.file]\npath = \"{}\"\n", path.display());
    let f = fixture(Setup { master_users: true, mapping: Some(&mapping), ..Setup::default() }).await?;
    let (code, shown) = f.cp.api().get("/mappings/alice@example.test").await?;
    assert_eq!(code, 200, "{shown}");
    assert_eq!(shown["destination"], "new", "{shown}");
    let proxy = f.node.addr("imap");
    assert_eq!(switchyard_tests::inbox_subjects(proxy, ALICE.0, ALICE.1).await?, Ok(vec!["on new".to_string()]));
    let login = Dovecot::master_login(ALICE.0, MASTER.0);
    assert_eq!(switchyard_tests::inbox_subjects(proxy, &login, MASTER.1).await?, Ok(vec!["on new".to_string()]));
    Ok(())
}
