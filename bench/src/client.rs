//! The load client's IMAP connection: just enough protocol for the scenarios (greeting,
//! AUTHENTICATE PLAIN by continuation, tagged commands, FETCH literals skipped by length),
//! with one read buffer per connection and no per-line allocation.

use std::net::SocketAddr;
use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// What a tagged command returned: whether it was OK and how many literal bytes came with it.
pub struct Done {
    pub ok: bool,
    pub literal_bytes: u64,
}

impl Conn {
    /// Connects and reads the `* OK` greeting.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream, buf: Vec::with_capacity(2048), pos: 0 };
        let greeting = conn.line().await?;
        ensure!(conn.buf[greeting.clone()].starts_with(b"* OK"), "greeting: {}", conn.text(greeting));
        Ok(conn)
    }

    fn text(&self, range: Range<usize>) -> String {
        String::from_utf8_lossy(&self.buf[range]).into_owned()
    }

    /// The next line (without CRLF) as a range of `buf`, valid until the next read.
    async fn line(&mut self) -> Result<Range<usize>> {
        loop {
            // Rescanning from `pos` is fine: response lines are short.
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.pos..self.pos + i;
                self.pos += i + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes; compacts first so the buffer does not grow without bound.
    async fn fill(&mut self) -> Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.capacity() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        ensure!(n > 0, "connection closed by the server");
        Ok(())
    }

    /// Consumes `n` literal bytes without keeping them.
    async fn skip(&mut self, mut n: usize) -> Result<()> {
        let buffered = (self.buf.len() - self.pos).min(n);
        self.pos += buffered;
        n -= buffered;
        let mut scratch = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = n.min(scratch.len());
            let got = self.stream.read(&mut scratch[..want]).await?;
            ensure!(got > 0, "connection closed inside a literal");
            n -= got;
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads responses until the one tagged `tag`; literals (`{n}` at a line's end) skipped.
    async fn until_tagged(&mut self, tag: &str) -> Result<Done> {
        let mut literal_bytes = 0;
        loop {
            let line = self.line().await?;
            let bytes = &self.buf[line.clone()];
            if let Some(n) = literal_len(bytes) {
                literal_bytes += n as u64;
                self.skip(n).await?;
                continue;
            }
            if bytes.len() > tag.len() && bytes.starts_with(tag.as_bytes()) && bytes[tag.len()] == b' ' {
                let ok = bytes[tag.len() + 1..].starts_with(b"OK");
                return Ok(Done { ok, literal_bytes });
            }
        }
    }

    /// `tag command`, answered OK (or an error with the server's words).
    pub async fn command(&mut self, tag: &str, command: &str) -> Result<Done> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await?;
        let done = self.until_tagged(tag).await?;
        ensure!(done.ok, "{tag} {command} was refused");
        Ok(done)
    }

    /// AUTHENTICATE PLAIN with the response sent after the `+` continuation.
    pub async fn authenticate_plain(&mut self, tag: &str, user: &str, pass: &str) -> Result<()> {
        self.send(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes()).await?;
        let line = self.line().await?;
        if !self.buf[line.clone()].starts_with(b"+") {
            bail!("no continuation for AUTHENTICATE: {}", self.text(line));
        }
        let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.send(format!("{payload}\r\n").as_bytes()).await?;
        let done = self.until_tagged(tag).await?;
        ensure!(done.ok, "login of {user} refused");
        Ok(())
    }

    /// Appends `message` to `mailbox` (seeding a real server for the bulk scenario).
    pub async fn append(&mut self, tag: &str, mailbox: &str, message: &[u8]) -> Result<()> {
        self.send(format!("{tag} APPEND {mailbox} {{{}}}\r\n", message.len()).as_bytes()).await?;
        let line = self.line().await?;
        if !self.buf[line.clone()].starts_with(b"+") {
            bail!("APPEND refused: {}", self.text(line));
        }
        self.send(message).await?;
        self.send(b"\r\n").await?;
        let done = self.until_tagged(tag).await?;
        ensure!(done.ok, "APPEND to {mailbox} failed");
        Ok(())
    }

    /// Sends LOGOUT and waits for its tagged OK; the connection is dropped afterwards.
    pub async fn logout(mut self) -> Result<()> {
        self.command("z", "LOGOUT").await?;
        Ok(())
    }
}

/// `n` when the line ends in an IMAP literal announcement `{n}`.
pub fn literal_len(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.trim_end_matches('+').parse().ok()
}

/// One login cycle: connect, AUTHENTICATE PLAIN, SELECT INBOX, LOGOUT.
pub async fn login_cycle(addr: SocketAddr, user: &str, pass: &str) -> Result<()> {
    let mut conn = Conn::connect(addr).await?;
    conn.authenticate_plain("a1", user, pass).await?;
    conn.command("a2", "SELECT INBOX").await?;
    conn.logout().await
}

/// One bulk session: log in, FETCH messages `1..=count` whole, LOGOUT; the bytes fetched.
pub async fn fetch_all(addr: SocketAddr, user: &str, pass: &str, count: usize) -> Result<u64> {
    let mut conn = open_session(addr, user, pass).await?;
    let mut bytes = 0;
    for i in 1..=count {
        bytes += conn.command(&format!("f{i}"), &format!("FETCH {i} BODY.PEEK[]")).await?.literal_bytes;
    }
    conn.logout().await?;
    Ok(bytes)
}

/// An authenticated session left open with INBOX selected (the idle scenario).
pub async fn open_session(addr: SocketAddr, user: &str, pass: &str) -> Result<Conn> {
    let mut conn = Conn::connect(addr).await?;
    conn.authenticate_plain("a1", user, pass).await?;
    conn.command("a2", "SELECT INBOX").await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::literal_len;

    #[test]
    fn literal_announcements_are_read_from_the_line_end() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {5242880}"), Some(5_242_880));
        assert_eq!(literal_len(b"a1 APPEND INBOX {12+}"), Some(12));
        assert_eq!(literal_len(b"* 1 EXISTS"), None);
        assert_eq!(literal_len(b"* OK {x}"), None);
    }
}
