//! A deliberately small IMAP client for assertions: line based, literal aware, every read
//! bounded by a timeout so a misbehaving proxy fails a test instead of hanging it.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::timeout;

/// Upper bound for one connect or one response line; generous for slow CI machines.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One IMAP connection. Responses come back as "logical lines": a line that announces a
/// literal `{n}` continues with those n bytes and the rest of the line, all in one `String`.
pub struct ImapClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: String,
    next_tag: u32,
}

impl ImapClient {
    /// Connects and reads the greeting (which is not checked: a proxy may answer `* BYE`).
    pub async fn connect<A: ToSocketAddrs + Debug>(addr: A) -> Result<Self> {
        let what = format!("connecting to IMAP at {addr:?}");
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("timed out")
            .and_then(|r| r.map_err(anyhow::Error::from))
            .context(what)?;
        Self::from_stream(stream).await
    }

    /// A client on a connection already open (e.g. after the test wrote a PROXY header).
    pub async fn from_stream(stream: TcpStream) -> Result<Self> {
        let (read, writer) = stream.into_split();
        let mut client = Self { reader: BufReader::new(read), writer, greeting: String::new(), next_tag: 1 };
        client.greeting = client.read_line().await.context("reading the IMAP greeting")?;
        Ok(client)
    }

    /// The untagged greeting line, e.g. `* OK [CAPABILITY ...] Dovecot ready.`
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// `LOGIN`; returns the tagged line whatever its status (`NO` is an answer, not an error).
    pub async fn login(&mut self, user: &str, pass: &str) -> Result<String> {
        let (_, tagged) = self.command(&format!("LOGIN {} {}", quote(user), quote(pass))).await?;
        Ok(tagged)
    }

    /// `AUTHENTICATE PLAIN`, either with the SASL-IR initial response on the command line or
    /// by answering the `+` continuation; returns the tagged line.
    pub async fn authenticate_plain(&mut self, user: &str, pass: &str, sasl_ir: bool) -> Result<String> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let tag = self.tag();
        if sasl_ir {
            self.write_line(&format!("{tag} AUTHENTICATE PLAIN {token}")).await?;
        } else {
            self.write_line(&format!("{tag} AUTHENTICATE PLAIN")).await?;
            let reply = self.read_line().await?;
            if reply.starts_with(&format!("{tag} ")) {
                return Ok(reply);
            }
            ensure!(reply.starts_with('+'), "expected a continuation, got {reply:?}");
            self.write_line(&token).await?;
        }
        let (_, tagged) = self.read_until_tagged(&tag).await?;
        Ok(tagged)
    }

    /// Sends one command (without tag) and returns its untagged lines and the tagged line.
    pub async fn command(&mut self, command: &str) -> Result<(Vec<String>, String)> {
        let tag = self.tag();
        self.write_line(&format!("{tag} {command}")).await?;
        self.read_until_tagged(&tag).await.with_context(|| format!("waiting for the answer to {command:?}"))
    }

    /// Subjects of every message in INBOX, in sequence order (SELECT + FETCH of the header).
    pub async fn subjects_in_inbox(&mut self) -> Result<Vec<String>> {
        let (untagged, tagged) = self.command("SELECT INBOX").await?;
        ensure!(status(&tagged) == "OK", "SELECT INBOX failed: {tagged}");
        let exists = untagged
            .iter()
            .find_map(|line| line.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
            .unwrap_or(0u32);
        if exists == 0 {
            return Ok(Vec::new());
        }
        let (untagged, tagged) = self.command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await?;
        ensure!(status(&tagged) == "OK", "FETCH failed: {tagged}");
        Ok(untagged.iter().filter_map(|line| subject_in(line)).collect())
    }

    /// `LOGOUT`, expecting the tagged `OK`.
    pub async fn logout(mut self) -> Result<()> {
        let (_, tagged) = self.command("LOGOUT").await?;
        ensure!(status(&tagged) == "OK", "LOGOUT failed: {tagged}");
        Ok(())
    }

    /// Writes raw protocol text plus CRLF, for tests that script an exchange by hand.
    pub async fn write_line(&mut self, line: &str) -> Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Reads one logical response line without its final CRLF, following literals.
    pub async fn read_line(&mut self) -> Result<String> {
        let mut logical = String::new();
        loop {
            let mut raw = Vec::new();
            let n = timeout(IO_TIMEOUT, self.reader.read_until(b'\n', &mut raw))
                .await
                .context("timed out reading from the IMAP server")??;
            if n == 0 {
                bail!("connection closed by the server (partial line {logical:?})");
            }
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end_matches(['\r', '\n']);
            logical.push_str(text);
            let Some(len) = literal_len(text) else {
                return Ok(logical);
            };
            let mut literal = vec![0; len];
            timeout(IO_TIMEOUT, self.reader.read_exact(&mut literal))
                .await
                .context("timed out reading a literal")??;
            logical.push_str("\r\n");
            logical.push_str(&String::from_utf8_lossy(&literal));
        }
    }

    async fn read_until_tagged(&mut self, tag: &str) -> Result<(Vec<String>, String)> {
        let prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line.starts_with(&prefix) {
                return Ok((untagged, line));
            }
            // Without this, a continuation request would make us wait for a line that
            // only comes after we send data we don't have.
            ensure!(!line.starts_with('+'), "unexpected continuation request: {line}");
            untagged.push(line);
        }
    }

    fn tag(&mut self) -> String {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        tag
    }
}

/// The status word of a tagged line: `"OK"`, `"NO"`, `"BAD"` (or `""` if there is none).
/// Logs in at `addr`, reads the subjects in INBOX and logs out: `Ok(subjects)`, or the
/// tagged answer of a refused login as `Err` (which server a client reached, in one call).
pub async fn inbox_subjects(
    addr: impl ToSocketAddrs + Debug + Copy,
    user: &str,
    password: &str,
) -> Result<std::result::Result<Vec<String>, String>> {
    let mut imap = ImapClient::connect(addr).await?;
    let tagged = imap.login(user, password).await?;
    if status(&tagged) != "OK" {
        return Ok(Err(tagged));
    }
    let subjects = imap.subjects_in_inbox().await?;
    imap.logout().await?;
    Ok(Ok(subjects))
}

/// The subjects in `user`'s INBOX at `addr`; a refused login is an error.
pub async fn inbox_of(addr: impl ToSocketAddrs + Debug + Copy, user: &str, password: &str) -> Result<Vec<String>> {
    inbox_subjects(addr, user, password).await?.map_err(|tagged| anyhow::anyhow!("login as {user}: {tagged}"))
}

/// Waits (at most `within`) until `subject` is in `user`'s INBOX at `addr` (mail that is
/// delivered asynchronously, e.g. queued by Postfix).
pub async fn until_in_inbox(
    addr: impl ToSocketAddrs + Debug + Copy,
    (user, password): (&str, &str),
    subject: &str,
    within: std::time::Duration,
) -> Result<()> {
    crate::eventually(within, || async {
        let subjects = inbox_of(addr, user, password).await?;
        anyhow::ensure!(subjects.iter().any(|s| s == subject), "{user} has {subjects:?}");
        Ok(())
    })
    .await
}

pub fn status(tagged: &str) -> &str {
    tagged.split(' ').nth(1).unwrap_or("")
}

/// An IMAP quoted string; enough for the user names and passwords tests use.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Size of the literal a response line announces at its end (`{12}` or `{12+}`).
fn literal_len(line: &str) -> Option<usize> {
    let inner = line.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

/// The Subject header value inside a FETCH response line, if any.
fn subject_in(line: &str) -> Option<String> {
    let start = line.to_ascii_lowercase().find("subject:")? + "subject:".len();
    let rest = &line[start..];
    let end = rest.find("\r\n").unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_len("* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {22}"), Some(22));
        assert_eq!(literal_len("a1 LOGIN {5+}"), Some(5));
        assert_eq!(literal_len("* OK no literal"), None);
        assert_eq!(literal_len("* OK {abc}"), None);
    }

    #[test]
    fn subjects_and_status() {
        let line = "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: hello one\r\n\r\n)";
        assert_eq!(subject_in(line).as_deref(), Some("hello one"));
        assert_eq!(subject_in("* 1 FETCH (FLAGS ())"), None);
        assert_eq!(status("a3 NO [AUTHENTICATIONFAILED] Authentication failed."), "NO");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    /// A scripted server proves literals are read by length, not by line.
    #[tokio::test]
    async fn reads_fetch_literals_that_contain_line_breaks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"* OK ready\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let _ = sock.read(&mut buf).await.unwrap();
            let literal = "Subject: {3}\r\n\r\n";
            let reply = format!(
                "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {{{}}}\r\n{literal})\r\na1 OK done\r\n",
                literal.len()
            );
            sock.write_all(reply.as_bytes()).await.unwrap();
        });
        let mut client = ImapClient::connect(addr).await.unwrap();
        assert_eq!(client.greeting(), "* OK ready");
        let (untagged, tagged) = client.command("FETCH 1 BODY[]").await.unwrap();
        assert_eq!(tagged, "a1 OK done");
        assert_eq!(untagged.len(), 1, "{untagged:?}");
        assert_eq!(subject_in(&untagged[0]).as_deref(), Some("{3}"));
    }
}
