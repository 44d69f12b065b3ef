//! LMTP for scenario 2's delivery half: the fast scripted responder (greeting, LHLO, MAIL,
//! RCPT, DATA read up to its terminator and thrown away, one `250` per recipient, RSET,
//! NOOP, QUIT), run inside the `backend` process next to the scripted IMAP server, and the
//! load client's delivery session.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Context, Result};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read size on both sides: the message moves in large pieces.
const CHUNK: usize = 64 * 1024;
/// Longest command or reply line either side accepts.
const MAX_LINE: usize = 4096;
const TERMINATOR: &[u8] = b"\r\n.\r\n";

/// Serves LMTP on `127.0.0.1:0` forever; logs `lmtp backend listening addr=…` on stderr.
pub async fn serve() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("lmtp backend listening addr={}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = respond(stream).await;
        });
    }
}

/// One LMTP session of the responder: every recipient is accepted.
async fn respond(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Lines::new(stream);
    conn.send(b"220 bench LMTP ready\r\n").await?;
    let mut recipients = 0usize;
    loop {
        let line = conn.line().await?.to_ascii_uppercase();
        let reply: &[u8] = match line.get(..4).unwrap_or_default() {
            b"LHLO" => b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
            b"MAIL" => {
                recipients = 0;
                b"250 2.1.0 Ok\r\n"
            }
            b"RCPT" => {
                recipients += 1;
                b"250 2.1.5 Ok\r\n"
            }
            b"DATA" if recipients > 0 => {
                conn.send(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                conn.skip_message().await?;
                let replies = b"250 2.0.0 Delivered\r\n".repeat(recipients);
                conn.send(&replies).await?;
                recipients = 0;
                continue;
            }
            b"DATA" => b"503 5.5.1 No valid recipients\r\n",
            b"QUIT" => {
                conn.send(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 2.0.0 Ok\r\n",
        };
        conn.send(reply).await?;
    }
}

/// A connection read line by line, with a message body skipped to its terminator.
struct Lines {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Lines {
    fn new(stream: TcpStream) -> Self {
        Self { stream, buf: Vec::with_capacity(CHUNK), pos: 0 }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads more; the consumed prefix is dropped first.
    async fn fill(&mut self) -> Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.reserve(CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        ensure!(n > 0, "connection closed");
        Ok(())
    }

    /// The next line without CRLF.
    async fn line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..]) {
                let line = self.buf[self.pos..self.pos + i].strip_suffix(b"\r").unwrap_or_default().to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            ensure!(self.buf.len() - self.pos <= MAX_LINE, "line too long");
            self.fill().await?;
        }
    }

    /// Consumes the message after `354` through its `CRLF.CRLF` (the CRLF before the dot
    /// may be the one that ended the DATA line's reply on the sender's side: the body
    /// starts at a line start, so a lone `.CRLF` there ends an empty message).
    async fn skip_message(&mut self) -> Result<()> {
        if self.buf[self.pos..].starts_with(b".\r\n") {
            self.pos += 3;
            return Ok(());
        }
        let finder = memmem::Finder::new(TERMINATOR);
        loop {
            if let Some(i) = finder.find(&self.buf[self.pos..]) {
                self.pos += i + TERMINATOR.len();
                return Ok(());
            }
            // Keep the last bytes: the terminator may straddle two reads.
            self.pos = self.buf.len().saturating_sub(TERMINATOR.len() - 1).max(self.pos);
            self.fill().await?;
        }
    }
}

/// One delivery session: LHLO, then `count` transactions of `message` to `rcpt`, QUIT.
/// Returns the message bytes delivered. `message` must end in CRLF and need no
/// dot-stuffing (the bench's messages have no line starting with `.`).
pub async fn deliver_all(addr: SocketAddr, rcpt: &str, message: &[u8], count: usize) -> Result<u64> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut conn = Lines::new(stream);
    expect(&mut conn, b"220").await?;
    conn.send(b"LHLO bench.example.test\r\n").await?;
    expect(&mut conn, b"250").await?;
    let envelope = format!("MAIL FROM:<bench@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    for _ in 0..count {
        // PIPELINING: the envelope in one write, its three replies after.
        conn.send(envelope.as_bytes()).await?;
        for code in [b"250", b"250", b"354"] {
            expect(&mut conn, code).await?;
        }
        conn.send(message).await?;
        conn.send(b".\r\n").await?;
        expect(&mut conn, b"250").await.context("after the message")?;
    }
    conn.send(b"QUIT\r\n").await?;
    expect(&mut conn, b"221").await?;
    Ok((message.len() * count) as u64)
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(conn: &mut Lines, code: &[u8; 3]) -> Result<()> {
    loop {
        let line = conn.line().await?;
        if !line.starts_with(code) {
            bail!("expected {}, got {:?}", String::from_utf8_lossy(code), String::from_utf8_lossy(&line));
        }
        if line.get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}
