//! End to end TLS through a real node. Client leg: STARTTLS/STLS and implicit TLS with
//! Python's imaplib, poplib and smtplib and curl, verifying the node's certificate against
//! the test CA, and SNI picking one of two certificates. Backend leg: a real Dovecot with
//! TLS behind `starttls` (pinned) and `implicit` (insecure) endpoints, and the leg refused
//! (never a login) when the certificate does not verify. Every account has a different
//! message on each server, so what a client reads proves where its login landed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::json;
use switchyard_tests::config::{Destination, Listener, NodeConfig};
use switchyard_tests::fleet::{ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::{
    curl, eventually, leaf_sha256_hex, python_imap, python_pop3, python_smtp_submit, require_or_skip, run_client,
    status, ClientTls, Dovecot, ImapClient, Postfix, SieveClient, TestPki,
};

const USERS: &[(&str, &str)] = &[
    ("alice@example.test", "alicepw"),
    ("bob@example.test", "bobpw"),
    ("carol@example.test", "carolpw"),
    ("dave@example.test", "davepw"),
    ("erin@example.test", "erinpw"),
];
const PROPAGATION: Duration = Duration::from_secs(10);
/// Postfix queues a submitted message and delivers it a moment later.
const DELIVERY: Duration = Duration::from_secs(20);
/// The name the node's default certificate carries (with the IP SAN 127.0.0.1).
const MAIL_NAME: &str = "mail.example.test";
const OTHER_NAME: &str = "imap.other.test";

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap_or_default()
}

/// A listener; `allow_plaintext_auth` stays at its default (false).
fn listener(id: &str, protocol: &str, tls: &str) -> Listener {
    Listener::new(id, protocol).tls(tls).plaintext_auth(None)
}

/// The node's certificates: `main`, the default, for mail.example.test and 127.0.0.1 (so
/// clients verifying the numeric host accept it), and `other` for imap.other.test.
fn certificates(pki: &TestPki) -> Result<String> {
    let table = |id: &str, (cert, key): (PathBuf, PathBuf), default: bool| {
        format!("[tls.certificate.{id}]\ncert = {:?}\nkey = {:?}\ndefault = {default}\n", cert.display(), key.display())
    };
    Ok(table("main", pki.issue(&[MAIL_NAME, "127.0.0.1"])?, true) + &table("other", pki.issue(&[OTHER_NAME])?, false))
}

/// A node with `listeners` and `tables` (certificates), once it is ready.
async fn node(cp: &ControlPlane, listeners: Vec<Listener>, tables: &str) -> Result<Node> {
    let config = listeners.into_iter().fold(NodeConfig::new("dp-1", &[cp.endpoint()]), NodeConfig::listener);
    let node = Node::start_config(&config.tables(tables), Some(NODE_TOKEN)).await?;
    eventually(PROPAGATION, || async {
        let (code, body) = node.readyz().await?;
        ensure!(code == 200, "{body}");
        Ok(())
    })
    .await?;
    Ok(node)
}

/// A destination on 127.0.0.1 with `(protocol, port, tls)` endpoints, whose credentials
/// may cross only TLS legs, and its verification keys in `verify`.
fn tls_destination(id: &str, endpoints: &[(&str, u16, &str)], verify: &str) -> Destination {
    let tls_only = Destination::new(id).tls_only().key(verify);
    endpoints.iter().fold(tls_only, |d, (protocol, port, tls)| d.tls_endpoint(protocol, *port, tls))
}

/// The tables of `destinations`, for [`ControlPlane::start_destinations`].
fn tables(destinations: &[Destination]) -> String {
    destinations.iter().map(Destination::to_toml).collect()
}

async fn map(cp: &ControlPlane, user: &str, destination: &str) -> Result<()> {
    let (code, body) = cp.api().put(&format!("/mappings/{user}"), json!({ "destination": destination })).await?;
    ensure!(code == 200, "{body}");
    Ok(())
}

fn ca(pki: &TestPki) -> String {
    pki.ca_pem_path().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leg_starttls_and_implicit_tls_with_real_clients() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let legacy = Dovecot::start(USERS)?;
    legacy.deliver("alice@example.test", "on legacy")?;
    let endpoints = [("imap", legacy.imap_port()), ("pop3", legacy.pop3_port())];
    let cp = ControlPlane::start_destinations(&tables(&[Destination::new("legacy").endpoints(&endpoints)]), "legacy")
        .await?;
    let listeners = vec![
        listener("imap", "imap", "starttls"),
        listener("imaps", "imap", "implicit"),
        listener("pop3", "pop3", "starttls"),
        listener("pop3s", "pop3", "implicit"),
    ];
    let node = node(&cp, listeners, &certificates(&pki)?).await?;
    let (imap, imaps) = (node.addr("imap").port(), node.addr("imaps").port());
    let (pop3, pop3s) = (node.addr("pop3").port(), node.addr("pop3s").port());
    let (user, pass) = ("alice@example.test", password("alice@example.test"));
    let (starttls, implicit) = (ClientTls::starttls(pki.ca_pem_path()), ClientTls::implicit(pki.ca_pem_path()));

    for (port, tls) in [(imap, &starttls), (imaps, &implicit)] {
        let (ok, text) = python_imap(port, user, pass, tls).await?;
        assert!(ok && text == "on legacy", "imaplib {tls:?}: {text}");
    }
    let (ok, text) = python_imap(imap, user, pass, &ClientTls::Plain).await?;
    assert!(!ok && text.contains("PRIVACYREQUIRED"), "cleartext LOGIN before STARTTLS: {text}");
    for (port, tls) in [(pop3, &starttls), (pop3s, &implicit)] {
        let (ok, text) = python_pop3(port, user, pass, tls).await?;
        assert!(ok && text == "on legacy", "poplib {tls:?}: {text}");
    }
    let (ok, text) = python_pop3(pop3, user, pass, &ClientTls::Plain).await?;
    assert!(!ok && text.contains("Plaintext authentication disallowed"), "cleartext USER before STLS: {text}");

    // curl by name (SNI mail.example.test), implicit and STARTTLS (--ssl-reqd on imap://).
    let login = format!("{user}:{pass}");
    for (scheme, port, extra) in [("imaps", imaps, None), ("imap", imap, Some("--ssl-reqd"))] {
        let resolve = format!("{MAIL_NAME}:{port}:127.0.0.1");
        let url = format!("{scheme}://{MAIL_NAME}:{port}/INBOX;MAILINDEX=1");
        let mut args =
            vec!["--cacert".to_string(), ca(&pki), "--resolve".into(), resolve, "--user".into(), login.clone()];
        args.extend(extra.map(str::to_string));
        args.push(url);
        let (ok, text) = curl(&args).await?;
        assert!(ok && text.contains("Subject: on legacy"), "curl {scheme}: {text}");
    }
    Ok(())
}

/// Handshakes with each server name (none for the IP address) and prints the common name
/// and DNS names of the certificate presented, verified against the CA for that name.
const SNI: &str = r#"
import socket, ssl, sys
port, cafile, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
ctx = ssl.create_default_context(cafile=cafile)
for name in names:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            cert = tls.getpeercert()
            cn = [v for rdn in cert["subject"] for k, v in rdn if k == "commonName"][0]
            dns = sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
            print(f"{name} -> {cn} {','.join(dns)}")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_for_each_server_name() -> Result<()> {
    if !require_or_skip("python3") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    // Only handshakes here: the destination is never dialled.
    let cp =
        ControlPlane::start_destinations(&tables(&[Destination::new("legacy").endpoint("imap", 9)]), "legacy").await?;
    let node = node(&cp, vec![listener("imaps", "imap", "implicit")], &certificates(&pki)?).await?;
    let port = node.addr("imaps").port().to_string();
    let args = ["-c", SNI, &port, &ca(&pki), MAIL_NAME, OTHER_NAME, "127.0.0.1"];
    let (ok, text) = run_client("python3", args).await?;
    assert!(ok, "{text}");
    let expected = [
        format!("{MAIL_NAME} -> {MAIL_NAME} {MAIL_NAME}"),
        format!("{OTHER_NAME} -> {OTHER_NAME} {OTHER_NAME}"),
        // No SNI for an address: the default certificate.
        format!("127.0.0.1 -> {MAIL_NAME} {MAIL_NAME}"),
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_and_smtp_over_starttls_and_implicit_tls_through_postfix() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let legacy = Dovecot::start(USERS)?;
    let postfix = Postfix::start(&legacy)?;
    let endpoints = [("submission", postfix.submission_port()), ("smtp", postfix.smtp_port())];
    let cp = ControlPlane::start_destinations(&tables(&[Destination::new("legacy").endpoints(&endpoints)]), "legacy")
        .await?;
    let listeners = vec![
        listener("sub", "submission", "starttls"),
        listener("subs", "submission", "implicit"),
        listener("mx", "smtp", "starttls"),
    ];
    let node = node(&cp, listeners, &certificates(&pki)?).await?;
    let login = Some(("alice@example.test", password("alice@example.test")));
    let (from, to) = ("alice@example.test", ["bob@example.test"]);
    let (starttls, implicit) = (ClientTls::starttls(pki.ca_pem_path()), ClientTls::implicit(pki.ca_pem_path()));

    let (ok, text) = python_smtp_submit(node.addr("sub").port(), login, from, &to, "via 587", &starttls).await?;
    assert!(ok && text.contains("AUTH 235"), "{text}");
    let (ok, text) = python_smtp_submit(node.addr("subs").port(), login, from, &to, "via 465", &implicit).await?;
    assert!(ok && text.contains("AUTH 235"), "{text}");
    let (ok, text) = python_smtp_submit(node.addr("sub").port(), login, from, &to, "clear", &ClientTls::Plain).await?;
    assert!(!ok && text.contains("SMTPNotSupportedError"), "no AUTH before STARTTLS: {text}");
    let (ok, text) =
        python_smtp_submit(node.addr("mx").port(), None, "sender@example.org", &to, "via 25", &starttls).await?;
    assert!(ok, "{text}");

    eventually(DELIVERY, || async {
        let mut imap = ImapClient::connect(legacy.imap_addr()).await?;
        ensure!(status(&imap.login("bob@example.test", password("bob@example.test")).await?) == "OK");
        let subjects = imap.subjects_in_inbox().await?;
        ensure!(subjects.len() == 3, "bob has {subjects:?}");
        for subject in ["via 587", "via 465", "via 25"] {
            ensure!(subjects.iter().any(|s| s == subject), "bob has {subjects:?}");
        }
        Ok(())
    })
    .await
}

/// Logs `user` in through the node's plain IMAP listener; the tagged line and the
/// subjects in the INBOX when the login succeeded.
async fn imap_through(node: &Node, user: &str) -> Result<(String, Vec<String>)> {
    let mut imap = ImapClient::connect(node.addr("imap")).await?;
    let tagged = imap.login(user, password(user)).await?;
    if status(&tagged) != "OK" {
        return Ok((tagged, Vec::new()));
    }
    let subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    Ok((tagged, subjects))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_leg_starttls_pinned_and_implicit_and_refused_unverified() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let (plain, secure) = (Dovecot::start(USERS)?, Dovecot::start_tls(USERS, &pki)?);
    for (user, _) in USERS {
        plain.deliver(user, "on plain")?;
        secure.deliver(user, "on tls")?;
    }
    let pin = leaf_sha256_hex(&secure.tls_cert_path().expect("started with TLS"))?;
    let wrong = leaf_sha256_hex(&pki.ca_pem_path())?;
    let starttls = [
        ("imap", secure.imap_port(), "starttls"),
        ("pop3", secure.pop3_port(), "starttls"),
        ("managesieve", secure.sieve_port(), "starttls"),
    ];
    let implicit = [("imap", secure.imaps_port(), "implicit"), ("pop3", secure.pop3s_port(), "implicit")];
    let destinations = [
        Destination::new("legacy").endpoints(&[("imap", plain.imap_port()), ("pop3", plain.pop3_port())]),
        tls_destination("pinned", &starttls, &format!("tls_verify = \"pinned\"\ntls_pin_sha256 = [\"{pin}\"]")),
        tls_destination("implicit", &implicit, "tls_verify = \"insecure\""),
        // The test CA is in no system store: the handshake must fail.
        tls_destination("system", &starttls[..1], "tls_verify = \"system\""),
        tls_destination(
            "wrongpin",
            &starttls[..1],
            &format!("tls_verify = \"pinned\"\ntls_pin_sha256 = [\"{wrong}\"]"),
        ),
    ];
    let cp = ControlPlane::start_destinations(&tables(&destinations), "legacy").await?;
    let listeners =
        vec![Listener::new("imap", "imap"), Listener::new("pop3", "pop3"), Listener::new("sieve", "managesieve")];
    let node = node(&cp, listeners, "").await?;
    for (user, destination) in [
        ("bob@example.test", "pinned"),
        ("carol@example.test", "implicit"),
        ("dave@example.test", "system"),
        ("erin@example.test", "wrongpin"),
    ] {
        map(&cp, user, destination).await?;
    }

    assert_eq!(imap_through(&node, "alice@example.test").await?.1, ["on plain"], "the plain leg still works");
    for user in ["bob@example.test", "carol@example.test"] {
        let (tagged, subjects) = imap_through(&node, user).await?;
        assert_eq!(status(&tagged), "OK", "{user}: {tagged}");
        assert_eq!(subjects, ["on tls"], "{user}");
        let pop3 = node.addr("pop3").port();
        let (ok, text) = python_pop3(pop3, user, password(user), &ClientTls::Plain).await?;
        assert!(ok && text == "on tls", "{user} over POP3: {text}");
    }
    let mut sieve = SieveClient::connect(node.addr("sieve")).await?;
    let done = sieve.authenticate_plain("bob@example.test", password("bob@example.test")).await?;
    assert!(done.starts_with("OK"), "ManageSieve after the backend's STARTTLS: {done}");
    sieve.list_scripts().await?;

    for user in ["dave@example.test", "erin@example.test"] {
        let (tagged, _) = imap_through(&node, user).await?;
        assert!(tagged.contains("NO [UNAVAILABLE]"), "{user}: a temporary failure, not a login: {tagged}");
    }
    // Both were refused in the handshake itself (the node's alert), before any credential.
    let log = eventually(PROPAGATION, || async {
        let log = secure.log();
        ensure!(log.matches("TLS handshaking: SSL_accept() failed").count() >= 2, "{log}");
        Ok(log)
    })
    .await?;
    for user in ["bob", "carol"] {
        let logins: Vec<&str> = log.lines().filter(|l| l.contains(&format!("Login: user=<{user}@"))).collect();
        assert!(!logins.is_empty() && logins.iter().all(|l| l.contains(", TLS")), "{user}: {logins:?}");
    }
    for user in ["dave", "erin"] {
        assert!(!log.contains(&format!("user=<{user}@")), "{user}'s credentials reached the server:\n{log}");
    }
    Ok(())
}
