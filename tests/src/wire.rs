//! Blocking line-protocol helpers the server harnesses share: greeting probes for readiness
//! and a minimal LMTP transaction for seeding mailboxes.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and returns the first line the server sends (`* OK`, `+OK`, `220 ...`), trimmed.
/// Short timeouts: callers poll this while a server starts.
pub(crate) fn read_greeting(addr: SocketAddr) -> Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// A minimal LMTP client transaction (RFC 2033) for one recipient.
pub(crate) fn lmtp_deliver(lmtp: SocketAddr, rcpt: &str, message: &str) -> Result<()> {
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
