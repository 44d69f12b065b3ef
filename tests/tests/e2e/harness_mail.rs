//! Proves the mail side of the harness against the real servers, without any proxy: POP3 and
//! IMAP over cleartext, STARTTLS/STLS and implicit TLS with the test CA; ManageSieve with our
//! client; LMTP to two recipients; Postfix submission (SASL through Dovecot) and port-25
//! delivery into Dovecot; two Postfix instances side by side.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use switchyard_tests::{
    curl, eventually, leaf_sha256_hex, python_imap, python_lmtp_send, python_pop3, python_smtp_submit, require_or_skip,
    run_client, sieve_status, status, swaks, ClientTls, Dovecot, DovecotOptions, ImapClient, Postfix, SieveClient,
    TestPki, TlsTrust,
};

const ALICE: (&str, &str) = ("alice@example.test", "alice-secret");
const BOB: (&str, &str) = ("bob@example.test", "bob-secret");
/// Postfix hands mail to Dovecot asynchronously; it normally takes well under a second.
const DELIVERY: Duration = Duration::from_secs(20);

/// Sorted subjects in `user`'s INBOX, read with our IMAP client.
async fn inbox(dovecot: &Dovecot, (user, pass): (&str, &str)) -> Result<Vec<String>> {
    let mut imap = ImapClient::connect(dovecot.imap_addr()).await?;
    let tagged = imap.login(user, pass).await?;
    ensure!(status(&tagged) == "OK", "login as {user}: {tagged}");
    let mut subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    subjects.sort();
    Ok(subjects)
}

/// Waits until `user`'s INBOX holds exactly `expected` (in any order).
async fn wait_for_inbox(dovecot: &Dovecot, user: (&str, &str), expected: &[&str]) -> Result<()> {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    eventually(DELIVERY, || async {
        let subjects = inbox(dovecot, user).await?;
        ensure!(subjects == expected, "{} has {subjects:?}, want {expected:?}", user.0);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pop3_in_cleartext_after_stls_and_over_pop3s() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("python3") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let dovecot = Dovecot::start_tls(&[ALICE, BOB], &pki)?;
    dovecot.deliver(ALICE.0, "pop one")?;
    dovecot.deliver(ALICE.0, "pop two")?;
    let ca = pki.ca_pem_path();
    let cases = [
        (dovecot.pop3_port(), ClientTls::Plain),
        (dovecot.pop3_port(), ClientTls::starttls(&ca)),
        (dovecot.pop3s_port(), ClientTls::implicit(&ca)),
        (dovecot.pop3s_port(), ClientTls::Implicit(TlsTrust::Insecure)),
    ];
    for (port, tls) in &cases {
        let (ok, out) = python_pop3(*port, ALICE.0, ALICE.1, tls).await?;
        assert!(ok, "{tls:?}: {out}");
        assert_eq!(out, "pop one\npop two", "{tls:?}");
    }
    let (ok, out) = python_pop3(dovecot.pop3_port(), BOB.0, BOB.1, &ClientTls::Plain).await?;
    assert!(ok && out.is_empty(), "bob's maildrop should be empty: {out}");

    // Verification is real: another CA's clients refuse the server, on both TLS paths.
    let stranger = TestPki::new()?;
    for (port, tls) in [
        (dovecot.pop3s_port(), ClientTls::implicit(stranger.ca_pem_path())),
        (dovecot.pop3_port(), ClientTls::starttls(stranger.ca_pem_path())),
    ] {
        let (ok, out) = python_pop3(port, ALICE.0, ALICE.1, &tls).await?;
        assert!(!ok && out.contains("CERTIFICATE_VERIFY_FAILED"), "{out}");
    }
    let (ok, out) = python_pop3(dovecot.pop3_port(), ALICE.0, "wrong", &ClientTls::Plain).await?;
    assert!(!ok && out.contains("error_proto"), "{out}");
    Ok(())
}

#[tokio::test]
async fn imaps_starttls_curl_and_the_certificate_pin() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("python3") || !require_or_skip("curl") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let dovecot = Dovecot::start_tls(&[ALICE], &pki)?;
    dovecot.deliver(ALICE.0, "over tls")?;
    let ca = pki.ca_pem_path();
    for (port, tls) in
        [(dovecot.imaps_port(), ClientTls::implicit(&ca)), (dovecot.imap_port(), ClientTls::starttls(&ca))]
    {
        let (ok, out) = python_imap(port, ALICE.0, ALICE.1, &tls).await?;
        assert!(ok, "{tls:?}: {out}");
        assert_eq!(out, "over tls");
    }
    // Cleartext login on the plain port still works with ssl = yes.
    let (ok, out) = python_imap(dovecot.imap_port(), ALICE.0, ALICE.1, &ClientTls::Plain).await?;
    assert!(ok && out == "over tls", "{out}");

    let url = format!("imaps://127.0.0.1:{}/INBOX;MAILINDEX=1", dovecot.imaps_port());
    let cacert = ca.display().to_string();
    let (ok, out) = curl(&["--cacert", &cacert, "--user", &format!("{}:{}", ALICE.0, ALICE.1), &url]).await?;
    assert!(ok && out.contains("Subject: over tls"), "{out}");
    let url = format!("pop3s://127.0.0.1:{}/1", dovecot.pop3s_port());
    let (ok, out) = curl(&["--cacert", &cacert, "--user", &format!("{}:{}", ALICE.0, ALICE.1), &url]).await?;
    assert!(ok && out.contains("Subject: over tls"), "{out}");

    // The pin helper matches what the live server presents.
    let pin = leaf_sha256_hex(&dovecot.tls_cert_path().expect("started with TLS"))?;
    let script = "import hashlib, socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        with ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='127.0.0.1') as s:\n\
        \x20   print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())";
    let (ok, seen) = run_client("python3", ["-c", script, &dovecot.imaps_port().to_string(), &cacert]).await?;
    assert!(ok, "{seen}");
    assert_eq!(seen, pin);
    Ok(())
}

#[tokio::test]
async fn master_user_logs_in_as_another_user() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let options = DovecotOptions { master_users: &[("admin", "admin-secret")], ..DovecotOptions::default() };
    let dovecot = Dovecot::start_with_options(&[ALICE, BOB], &options)?;
    dovecot.deliver(ALICE.0, "for alice")?;
    let as_alice = Dovecot::master_login(ALICE.0, "admin");
    assert_eq!(as_alice, "alice@example.test%admin");
    let mut imap = ImapClient::connect(dovecot.imap_addr()).await?;
    assert_eq!(status(&imap.login(&as_alice, "admin-secret").await?), "OK");
    assert_eq!(imap.subjects_in_inbox().await?, ["for alice"]);
    imap.logout().await?;
    for (login, pass) in [(as_alice.as_str(), "wrong"), ("nobody@example.test%admin", "admin-secret")] {
        let mut imap = ImapClient::connect(dovecot.imap_addr()).await?;
        assert_eq!(status(&imap.login(login, pass).await?), "NO", "{login}");
    }
    // Ordinary logins are unaffected.
    assert_eq!(inbox(&dovecot, ALICE).await?, ["for alice"]);
    Ok(())
}

#[tokio::test]
async fn managesieve_authenticate_put_and_list_scripts() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let dovecot = Dovecot::start_tls(&[ALICE], &pki)?;
    let mut sieve = SieveClient::connect(dovecot.sieve_addr()).await?;
    assert_eq!(sieve_status(sieve.greeting()), "OK", "{}", sieve.greeting());
    assert!(sieve.has_capability("STARTTLS"), "{:?}", sieve.capabilities());
    assert!(sieve.has_capability("SASL"), "{:?}", sieve.capabilities());
    assert_eq!(sieve_status(&sieve.authenticate_plain(ALICE.0, "wrong").await?), "NO");
    assert_eq!(sieve_status(&sieve.authenticate_plain(ALICE.0, ALICE.1).await?), "OK");
    assert!(sieve.list_scripts().await?.is_empty());
    let script = "require \"fileinto\";\r\nif header :contains \"subject\" \"x\" { fileinto \"INBOX\"; }\r\n";
    assert_eq!(sieve_status(&sieve.put_script("filters", script).await?), "OK");
    assert_eq!(sieve_status(&sieve.set_active("filters").await?), "OK");
    assert_eq!(sieve.list_scripts().await?, [("filters".to_string(), true)]);
    assert_eq!(sieve.get_script("filters").await?, script);
    sieve.logout().await?;

    // Without ssl = yes there is no STARTTLS to offer.
    let plain = Dovecot::start(&[ALICE])?;
    let sieve = SieveClient::connect(plain.sieve_addr()).await?;
    assert!(!sieve.has_capability("STARTTLS"), "{:?}", sieve.capabilities());
    Ok(())
}

#[tokio::test]
async fn lmtp_delivers_one_message_to_two_recipients() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("python3") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[ALICE, BOB])?;
    let (ok, out) = python_lmtp_send(dovecot.lmtp_port(), "sender@example.test", &[ALICE.0, BOB.0], "for both").await?;
    assert!(ok, "{out}");
    let data: Vec<&str> = out.lines().filter(|l| l.starts_with("DATA ")).collect();
    assert_eq!(data.len(), 2, "one DATA reply per recipient: {out}");
    assert!(data[0].starts_with("DATA alice@example.test 250") && data[1].starts_with("DATA bob@example.test 250"));

    // An unknown recipient is refused at RCPT; the others still get the message.
    let to = [BOB.0, "nobody@example.test"];
    let (ok, out) = python_lmtp_send(dovecot.lmtp_port(), "sender@example.test", &to, "partly").await?;
    assert!(!ok, "{out}");
    assert!(out.contains("RCPT nobody@example.test 550"), "{out}");
    assert!(out.contains("DATA bob@example.test 250"), "{out}");

    assert_eq!(inbox(&dovecot, ALICE).await?, ["for both"]);
    assert_eq!(inbox(&dovecot, BOB).await?, ["for both", "partly"]);
    Ok(())
}

#[tokio::test]
async fn postfix_submission_authenticates_through_dovecot_and_delivers() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") || !require_or_skip("swaks") {
        return Ok(());
    }
    let pki = TestPki::new()?;
    let dovecot = Dovecot::start(&[ALICE, BOB])?;
    let started = Instant::now();
    let postfix = Postfix::start_tls(&dovecot, &pki)?;
    eprintln!("postfix started in {:?}", started.elapsed());
    let port = postfix.submission_port();

    let (ok, out) = python_smtp_submit(port, Some(ALICE), ALICE.0, &[BOB.0], "via smtplib", &ClientTls::Plain).await?;
    assert!(ok, "{out}");
    assert!(out.contains("AUTH 235") && out.contains("DATA 250"), "{out}");
    let tls = ClientTls::starttls(pki.ca_pem_path());
    let (ok, out) = python_smtp_submit(port, Some(ALICE), ALICE.0, &[BOB.0], "via starttls", &tls).await?;
    assert!(ok, "{out}");

    let port_arg = port.to_string();
    let mut args = vec!["--server", "127.0.0.1", "--port", &port_arg, "--from", ALICE.0, "--to", BOB.0];
    args.extend(["--auth", "PLAIN", "--auth-user", ALICE.0, "--auth-password", ALICE.1]);
    args.extend(["--header", "Subject: via swaks", "--tls"]);
    let (ok, out) = swaks(&args).await?;
    assert!(ok, "{out}");
    assert!(out.contains("STARTTLS") && out.contains("235 2.7.0 Authentication successful"), "{out}");

    // No AUTH, no relay; a wrong password is a 535 from Dovecot's verdict.
    let (ok, out) = python_smtp_submit(port, None, ALICE.0, &[BOB.0], "anonymous", &ClientTls::Plain).await?;
    assert!(!ok && out.contains("RCPT bob@example.test 554"), "{out}");
    let (ok, out) =
        python_smtp_submit(port, Some((ALICE.0, "wrong")), ALICE.0, &[BOB.0], "bad password", &ClientTls::Plain)
            .await?;
    assert!(!ok && out.contains("SMTPAuthenticationError") && out.contains("535"), "{out}");

    wait_for_inbox(&dovecot, BOB, &["via smtplib", "via starttls", "via swaks"]).await?;
    assert!(inbox(&dovecot, ALICE).await?.is_empty());
    assert!(postfix.log().contains("sasl_username=alice@example.test"), "{}", postfix.log());
    Ok(())
}

#[tokio::test]
async fn postfix_smtp_port_takes_mail_for_the_domain_only() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") || !require_or_skip("swaks") {
        return Ok(());
    }
    let dovecot = Dovecot::start(&[ALICE, BOB])?;
    let postfix = Postfix::start(&dovecot)?;
    let port = postfix.smtp_port();
    let (ok, out) =
        python_smtp_submit(port, None, "someone@remote.test", &[ALICE.0, BOB.0], "via port 25", &ClientTls::Plain)
            .await?;
    assert!(ok, "{out}");
    let (ok, out) = python_smtp_submit(port, None, ALICE.0, &["x@elsewhere.test"], "relay", &ClientTls::Plain).await?;
    assert!(!ok && out.contains("Relay access denied"), "{out}");

    // The EHLO of the port-25 role: XCLIENT for the proxy, no AUTH, no STARTTLS (no PKI).
    let port_arg = port.to_string();
    let (ok, out) = swaks(&["--server", "127.0.0.1", "--port", &port_arg, "--quit-after", "EHLO"]).await?;
    assert!(ok, "{out}");
    assert!(out.contains(&format!("220 {} ESMTP", postfix.hostname())), "{out}");
    assert!(out.contains("250-XCLIENT"), "{out}");
    assert!(!out.contains("AUTH") && !out.contains("STARTTLS"), "{out}");

    wait_for_inbox(&dovecot, ALICE, &["via port 25"]).await?;
    wait_for_inbox(&dovecot, BOB, &["via port 25"]).await?;
    Ok(())
}

#[tokio::test]
async fn two_postfix_instances_run_side_by_side() -> Result<()> {
    if !require_or_skip("dovecot") || !require_or_skip("postfix") || !require_or_skip("python3") {
        return Ok(());
    }
    let (dovecot_a, dovecot_b) = (Dovecot::start(&[BOB])?, Dovecot::start(&[BOB])?);
    let started = Instant::now();
    let mut a = Postfix::start(&dovecot_a)?;
    let b = Postfix::start(&dovecot_b)?;
    eprintln!("two postfix instances started in {:?}", started.elapsed());
    assert_ne!(a.hostname(), b.hostname());
    for (postfix, subject) in [(&a, "through a"), (&b, "through b")] {
        let (ok, out) =
            python_smtp_submit(postfix.smtp_port(), None, "x@remote.test", &[BOB.0], subject, &ClientTls::Plain)
                .await?;
        assert!(ok, "{out}");
    }
    wait_for_inbox(&dovecot_a, BOB, &["through a"]).await?;
    wait_for_inbox(&dovecot_b, BOB, &["through b"]).await?;

    // Stopping one leaves the other alone; a restart comes back on the same ports.
    let (smtp, submission) = (a.smtp_port(), a.submission_port());
    let started = Instant::now();
    a.stop()?;
    eprintln!("postfix stopped in {:?}", started.elapsed());
    assert!(!a.is_running());
    assert!(tokio::net::TcpStream::connect(a.smtp_addr()).await.is_err());
    let (ok, out) =
        python_smtp_submit(b.smtp_port(), None, "x@remote.test", &[BOB.0], "b again", &ClientTls::Plain).await?;
    assert!(ok, "{out}");
    a.restart()?;
    assert_eq!((a.smtp_port(), a.submission_port()), (smtp, submission));
    let (ok, out) = python_smtp_submit(smtp, None, "x@remote.test", &[BOB.0], "a again", &ClientTls::Plain).await?;
    assert!(ok, "{out}");
    wait_for_inbox(&dovecot_a, BOB, &["through a", "a again"]).await?;
    wait_for_inbox(&dovecot_b, BOB, &["through b", "b again"]).await?;
    Ok(())
}
