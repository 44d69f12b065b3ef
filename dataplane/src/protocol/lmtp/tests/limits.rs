//! An SMTP/LMTP session's own bounds: commands without progress are capped (MAIL and RCPT
//! are progress of a kind and not counted, the first greeting neither), and the session
//! ends at `session_timeout` however busy the client keeps it.

use super::*;

#[tokio::test]
async fn junk_commands_are_counted_and_transaction_commands_are_not() {
    let ((legacy_port, _), (new_port, _)) = (backend(true).await, backend(true).await);
    let (_n, mut c) = session("lmtp", (legacy_port, new_port), bob_on_new(), "junk_command_limit = 3").await;
    assert!(ask(&mut c, "LHLO x\r\n").await.starts_with("250-t"), "the first greeting is not junk");
    for _ in 0..3 {
        assert_eq!(ask(&mut c, "MAIL FROM:<s@example.test>\r\n").await, "250 2.1.0 Ok\r\n");
        assert_eq!(ask(&mut c, "RCPT TO:<alice@example.test>\r\n").await, "250 2.1.5 Ok\r\n");
        assert_eq!(ask(&mut c, "MAIL FROM:<s@example.test>\r\n").await, "503 5.5.1 Nested MAIL command\r\n");
        assert_eq!(ask(&mut c, "DATA\r\n").await, "354 go ahead\r\n");
        assert_eq!(ask(&mut c, "hello\r\n.\r\n").await, "250 2.0.0 <alice@example.test> Saved\r\n");
    }
    assert_eq!(ask(&mut c, "RSET\r\n").await, "250 2.0.0 Ok\r\n");
    assert_eq!(ask(&mut c, "XYZZY\r\n").await, "502 5.5.2 Command not recognized\r\n");
    assert!(ask(&mut c, "LHLO x\r\n").await.starts_with("250-t"), "a repeated greeting is the third");
    let closing = ask(&mut c, "NOOP\r\n").await;
    assert_eq!(closing, "421 4.7.0 Too many commands without progress, closing connection\r\n");
    assert!(closed(&mut c).await);
}

#[tokio::test]
async fn a_busy_session_ends_at_its_time_limit() {
    let ((legacy_port, _), (new_port, _)) = (backend(false).await, backend(false).await);
    let keys = "session_timeout = \"600ms\"";
    let (_n, mut c) = session("smtp", (legacy_port, new_port), bob_on_new(), keys).await;
    let started = tokio::time::Instant::now();
    assert!(ask(&mut c, "EHLO x\r\n").await.starts_with("250-t"));
    let closing = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = ask(&mut c, "NOOP\r\n").await;
        if reply != "250 2.0.0 Ok\r\n" {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "still served after {:?}", started.elapsed());
    };
    assert_eq!(closing, "421 4.4.2 Session time limit exceeded, closing connection\r\n");
    assert!(closed(&mut c).await);
}
