//! The recipient limits of a listener that routes by recipient: RCPTs per transaction
//! (`max_recipients`) and lookups that miss the route cache per session (`max_resolves`).

use super::*;

#[tokio::test]
async fn recipients_per_transaction_and_lookups_per_session_are_limited() {
    let ((legacy_port, _), (new_port, _)) = (backend(false).await, backend(false).await);
    let limits = "max_recipients = 100\nmax_resolves = 3";
    let (_n, mut c) = session("smtp", (legacy_port, new_port), bob_on_new(), limits).await;
    ask(&mut c, "EHLO mx\r\n").await;
    assert_eq!(ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await, "250 2.1.0 Ok\r\n");
    for i in 0..3 {
        assert_eq!(ask(&mut c, &format!("RCPT TO:<r{i}@example.test>\r\n")).await, "250 2.1.5 Ok\r\n");
    }
    let spent = "451 4.7.1 Too many new recipients in this session, try again later\r\n";
    assert_eq!(ask(&mut c, "RCPT TO:<r3@example.test>\r\n").await, spent);
    // A recipient the cache answers needs no lookup; 4 RCPTs so far (the refused one too), 96 more fill the 100.
    for _ in 0..96 {
        assert_eq!(ask(&mut c, "RCPT TO:<r0@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    }
    assert_eq!(ask(&mut c, "RCPT TO:<r1@example.test>\r\n").await, "452 4.5.3 Too many recipients\r\n");
    // A new transaction has its own recipients, the session still no lookups.
    assert_eq!(ask(&mut c, "RSET\r\n").await, "250 2.0.0 Ok\r\n");
    ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await;
    assert_eq!(ask(&mut c, "RCPT TO:<r1@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
    assert_eq!(ask(&mut c, "RCPT TO:<bob@example.test>\r\n").await, spent);
}

#[tokio::test]
async fn a_pass_through_listener_spends_no_lookups() {
    let ((legacy_port, _), (new_port, _)) = (backend(true).await, backend(true).await);
    let extra = "pass_through = \"legacy\"\nmax_recipients = 100";
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), None, extra).await;
    ask(&mut c, "LHLO mx\r\n").await;
    ask(&mut c, "MAIL FROM:<s@example.org>\r\n").await;
    for i in 0..100 {
        assert_eq!(ask(&mut c, &format!("RCPT TO:<p{i}@example.test>\r\n")).await, "250 2.1.5 Ok\r\n");
    }
    assert_eq!(ask(&mut c, "RCPT TO:<p@example.test>\r\n").await, "452 4.5.3 Too many recipients\r\n");
}
