//! The backend leg of a delivery to `starttls` and `xclient` endpoints, against a scripted
//! LMTP server that logs every line it reads (`tls:` once encrypted): STARTTLS before any
//! of the transaction and the hello again inside TLS; a server that cannot upgrade gets
//! the recipient a 451 and never sees a MAIL; XCLIENT names the client, then the hello
//! is sent again.

use super::*;
use crate::tls::testing::TestTls;
use crate::tls::MaybeTls;

/// What the scripted server does with STARTTLS.
#[derive(Clone)]
enum StartTls {
    NotOffered,
    Refused,
    /// Its go-ahead and, in the same segment, a reply nobody asked for (what a man in
    /// the middle would slip in ahead of the handshake), then TLS.
    Injected(TlsAcceptor),
    Accepted(TlsAcceptor),
}

#[derive(Clone)]
struct Script {
    starttls: StartTls,
    /// Offers `XCLIENT ADDR PORT` and answers it with this code.
    xclient: Option<u16>,
}

/// Starts a scripted LMTP server; the lines it read, in order, over every connection.
async fn scripted(script: Script) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(lmtp_server(MaybeTls::Plain(s), script.clone(), Arc::clone(&lines)));
        }
    });
    (port, log)
}

async fn lmtp_server(stream: MaybeTls, script: Script, log: Arc<Mutex<Vec<String>>>) {
    let mut c = BufReader::new(stream);
    c.get_mut().write_all(b"220 scripted LMTP\r\n").await.unwrap();
    loop {
        let mut line = String::new();
        if c.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let tls = c.get_ref().is_tls();
        log.lock().unwrap().push(format!("{}{}", if tls { "tls:" } else { "" }, line.trim_end()));
        let reply = match line.get(..4).unwrap_or_default() {
            "LHLO" => hello(&script, tls),
            "STARTTLS" | "STAR" => match &script.starttls {
                StartTls::NotOffered => "502 5.5.1 Unknown command\r\n".into(),
                StartTls::Refused => "454 4.7.0 TLS not available\r\n".into(),
                StartTls::Injected(acceptor) | StartTls::Accepted(acceptor) => {
                    let injected = matches!(script.starttls, StartTls::Injected(_));
                    let go_ahead =
                        if injected { "220 2.0.0 Go ahead\r\n250 injected\r\n" } else { "220 2.0.0 Go ahead\r\n" };
                    c.get_mut().write_all(go_ahead.as_bytes()).await.unwrap();
                    match c.into_inner().accept(acceptor).await {
                        Ok(upgraded) => c = BufReader::new(upgraded),
                        Err(_) => return,
                    }
                    continue;
                }
            },
            "XCLI" if script.xclient == Some(220) => "220 scripted LMTP again\r\n".into(),
            "XCLI" => "550 5.7.0 Not authorized\r\n".into(),
            "MAIL" | "RCPT" => "250 2.1.0 Ok\r\n".into(),
            "DATA" => {
                c.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
                let mut body = String::new();
                while c.read_line(&mut body).await.unwrap_or(0) > 0 && !body.ends_with("\r\n.\r\n") {}
                "250 2.0.0 Saved\r\n".into()
            }
            "QUIT" => return,
            _ => "502 5.5.2 What?\r\n".into(),
        };
        c.get_mut().write_all(reply.as_bytes()).await.unwrap();
    }
}

fn hello(script: &Script, tls: bool) -> String {
    let mut reply = "250-scripted\r\n".to_string();
    if !tls && !matches!(script.starttls, StartTls::NotOffered) {
        reply.push_str("250-STARTTLS\r\n");
    }
    if script.xclient.is_some() {
        reply.push_str("250-XCLIENT ADDR PORT\r\n");
    }
    reply + "250 PIPELINING\r\n"
}

/// A node whose `legacy` LMTP endpoint is `port` with `tls` and `forwarding`, any
/// certificate accepted, and a client of its LMTP listener past LHLO and MAIL.
async fn client_of(port: u16, tls: &str, forwarding: &str) -> (Arc<Node>, BufReader<TcpStream>) {
    let node = Node::new("t".into(), Arc::new(Table(bob_on_new())), CancellationToken::new());
    let mut settings = crate::settings::tests::sample();
    settings.destinations.retain(|d| d.id == "legacy");
    let legacy = &mut settings.destinations[0];
    legacy.tls_verify = "insecure".into();
    legacy.endpoints = vec![pb::Endpoint {
        protocol: "lmtp".into(),
        port: u32::from(port),
        tls: tls.into(),
        forwarding: forwarding.into(),
    }];
    node.apply_settings(FleetSettings::try_from(settings).unwrap());
    let addr = serve(&node, listener("lmtp", ""), None).await;
    let mut c = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(read(&mut c).await.starts_with("220 t "));
    assert!(ask(&mut c, "LHLO mx\r\n").await.starts_with("250-t"));
    assert_eq!(ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await, "250 2.1.0 Ok\r\n");
    (node, c)
}

fn lines(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn a_starttls_endpoint_carries_the_whole_transaction_inside_tls() {
    let tls = TestTls::new();
    let (port, log) = scripted(Script { starttls: StartTls::Accepted(tls.acceptor.clone()), xclient: None }).await;
    let (_node, mut c) = client_of(port, "starttls", "none").await;
    assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.0 Ok\r\n");
    assert_eq!(ask(&mut c, "DATA\r\n").await, "354 go ahead\r\n");
    assert_eq!(ask(&mut c, "Subject: sealed\r\n\r\nbody\r\n.\r\n").await, "250 2.0.0 Saved\r\n");
    let seen = lines(&log);
    assert_eq!(
        seen[..5],
        ["LHLO t", "STARTTLS", "tls:LHLO t", "tls:MAIL FROM:<s@example.org>", "tls:RCPT TO:<alice@example.test>"]
    );
    assert!(seen[2..].iter().all(|l| l.starts_with("tls:")), "{seen:?}");
}

#[tokio::test]
async fn a_backend_that_cannot_upgrade_gets_no_envelope_and_counts_for_the_breaker() {
    let tls = TestTls::new();
    let cases = [
        ("not offered", StartTls::NotOffered),
        ("refused", StartTls::Refused),
        ("injected", StartTls::Injected(tls.acceptor.clone())),
    ];
    for (case, starttls) in cases {
        let (port, log) = scripted(Script { starttls, xclient: None }).await;
        let (node, mut c) = client_of(port, "starttls", "none").await;
        assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, UNROUTABLE, "{case}");
        let seen = lines(&log);
        assert!(!seen.iter().any(|l| l.contains("MAIL") || l.contains("RCPT")), "{case}: {seen:?}");
        let expected: &[&str] = if case == "not offered" { &["LHLO t"] } else { &["LHLO t", "STARTTLS"] };
        assert_eq!(seen, expected, "{case}: nothing asked blindly, nothing after the go-ahead");
        assert_eq!(node.breakers.get("legacy").health().consecutive_failures, 1, "{case}");
    }
}

#[tokio::test]
async fn xclient_names_the_client_and_the_hello_starts_over() {
    for (code, expected_hellos) in [(220, 2), (550, 1)] {
        let (port, log) = scripted(Script { starttls: StartTls::NotOffered, xclient: Some(code) }).await;
        let (_node, mut c) = client_of(port, "plain", "xclient").await;
        let client_port = c.get_ref().local_addr().unwrap().port();
        // A refused XCLIENT still delivers: the backend sees the node's address instead.
        assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.0 Ok\r\n", "{code}");
        let seen = lines(&log);
        assert_eq!(seen[..2], ["LHLO t".to_string(), format!("XCLIENT ADDR=127.0.0.1 PORT={client_port}")], "{code}");
        assert_eq!(seen.iter().filter(|l| *l == "LHLO t").count(), expected_hellos, "{code}: {seen:?}");
        assert_eq!(seen[expected_hellos + 1], "MAIL FROM:<s@example.org>", "{code}: {seen:?}");
    }
}
