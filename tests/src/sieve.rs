//! A small ManageSieve (RFC 5804) client for assertions; Python has none in its stdlib.
//! Line based and literal aware like `ImapClient`, every read bounded by a timeout.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::timeout;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One ManageSieve connection. A response is a list of data lines ending with an `OK`, `NO`
/// or `BYE` line, which every method returns as is (`NO` is an answer, not an error).
pub struct SieveClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    capabilities: Vec<String>,
    greeting: String,
}

impl SieveClient {
    /// Connects and reads the capability greeting (its final line is in [`Self::greeting`]).
    pub async fn connect<A: ToSocketAddrs + Debug>(addr: A) -> Result<Self> {
        let what = format!("connecting to ManageSieve at {addr:?}");
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("timed out")
            .and_then(|r| r.map_err(anyhow::Error::from))
            .context(what)?;
        let (read, writer) = stream.into_split();
        let mut client =
            Self { reader: BufReader::new(read), writer, capabilities: Vec::new(), greeting: String::new() };
        let (capabilities, greeting) = client.read_response().await.context("reading the greeting")?;
        client.capabilities = capabilities;
        client.greeting = greeting;
        Ok(client)
    }

    /// The capability lines of the greeting, e.g. `"IMPLEMENTATION" "Dovecot Pigeonhole"`.
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether the greeting announced `name` (e.g. `STARTTLS`, `SASL`).
    pub fn has_capability(&self, name: &str) -> bool {
        let quoted = format!("\"{}\"", name.to_ascii_uppercase());
        self.capabilities.iter().any(|line| line.to_ascii_uppercase().starts_with(&quoted))
    }

    /// The greeting's final line (`OK "Dovecot ready."` or a proxy's `BYE`).
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// `AUTHENTICATE "PLAIN" "<base64>"` with the initial response as a quoted string;
    /// returns the final line.
    pub async fn authenticate_plain(&mut self, user: &str, pass: &str) -> Result<String> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let (_, last) = self.command(&format!("AUTHENTICATE \"PLAIN\" \"{token}\"")).await?;
        Ok(last)
    }

    /// `LISTSCRIPTS`: `(name, active)` per script. Fails unless the answer is `OK`.
    pub async fn list_scripts(&mut self) -> Result<Vec<(String, bool)>> {
        let (lines, last) = self.command("LISTSCRIPTS").await?;
        if sieve_status(&last) != "OK" {
            bail!("LISTSCRIPTS failed: {last}");
        }
        Ok(lines
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix('"')?;
                let (name, after) = rest.split_once('"')?;
                Some((name.to_string(), after.trim().eq_ignore_ascii_case("ACTIVE")))
            })
            .collect())
    }

    /// `PUTSCRIPT "name" {n+}` with the script as a non-synchronizing literal.
    pub async fn put_script(&mut self, name: &str, script: &str) -> Result<String> {
        let command = format!("PUTSCRIPT {} {{{}+}}\r\n{script}", quote(name), script.len());
        Ok(self.command(&command).await?.1)
    }

    /// `SETACTIVE "name"`; returns the final line.
    pub async fn set_active(&mut self, name: &str) -> Result<String> {
        Ok(self.command(&format!("SETACTIVE {}", quote(name))).await?.1)
    }

    /// `GETSCRIPT "name"`: the script text, failing unless the answer is `OK`.
    pub async fn get_script(&mut self, name: &str) -> Result<String> {
        let (lines, last) = self.command(&format!("GETSCRIPT {}", quote(name))).await?;
        if sieve_status(&last) != "OK" {
            bail!("GETSCRIPT failed: {last}");
        }
        // The literal arrives as "{n}\r\n<text>" on the first logical line.
        let first = lines.first().map(String::as_str).unwrap_or_default();
        Ok(first.split_once("\r\n").map_or("", |(_, text)| text).to_string())
    }

    /// `LOGOUT`, expecting `OK`.
    pub async fn logout(mut self) -> Result<()> {
        let (_, last) = self.command("LOGOUT").await?;
        if sieve_status(&last) != "OK" {
            bail!("LOGOUT failed: {last}");
        }
        Ok(())
    }

    /// Sends one command line and returns its data lines and the final status line.
    pub async fn command(&mut self, command: &str) -> Result<(Vec<String>, String)> {
        self.writer.write_all(format!("{command}\r\n").as_bytes()).await?;
        self.writer.flush().await?;
        let verb = command.split_whitespace().next().unwrap_or_default().to_string();
        self.read_response().await.with_context(|| format!("waiting for the answer to {verb}"))
    }

    async fn read_response(&mut self) -> Result<(Vec<String>, String)> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            if matches!(sieve_status(&line), "OK" | "NO" | "BYE") {
                return Ok((lines, line));
            }
            lines.push(line);
        }
    }

    /// One logical line without CRLF; a `{n}` at the end pulls in n bytes and the rest of
    /// the line, joined with CRLF as in `ImapClient`.
    async fn read_line(&mut self) -> Result<String> {
        let mut logical = String::new();
        loop {
            let mut raw = Vec::new();
            let n = timeout(IO_TIMEOUT, self.reader.read_until(b'\n', &mut raw))
                .await
                .context("timed out reading from the ManageSieve server")??;
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
}

/// The status word of a final line: `OK`, `NO`, `BYE` (upper-cased), or the first word.
pub fn sieve_status(line: &str) -> &str {
    let word = line.split([' ', '(']).next().unwrap_or("");
    ["OK", "NO", "BYE"].into_iter().find(|s| word.eq_ignore_ascii_case(s)).unwrap_or(word)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn literal_len(line: &str) -> Option<usize> {
    let inner = line.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn statuses_and_literals() {
        assert_eq!(sieve_status("OK \"Logged in.\""), "OK");
        assert_eq!(sieve_status("no (AUTH-TOO-WEAK) \"x\""), "NO");
        assert_eq!(sieve_status("\"SASL\" \"PLAIN\""), "\"SASL\"");
        assert_eq!(literal_len("{12}"), Some(12));
        assert_eq!(literal_len("\"a\" {3+}"), Some(3));
        assert_eq!(literal_len("OK"), None);
    }

    /// A scripted server: capabilities, a literal in LISTSCRIPTS, and the final lines.
    #[tokio::test]
    async fn parses_greeting_and_script_list() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"\"IMPLEMENTATION\" \"test\"\r\n\"STARTTLS\"\r\nOK \"ready\"\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let _ = sock.read(&mut buf).await.unwrap();
            sock.write_all(b"\"one\"\r\n\"two\" ACTIVE\r\nOK \"done\"\r\n").await.unwrap();
        });
        let mut client = SieveClient::connect(addr).await.unwrap();
        assert!(client.has_capability("starttls"));
        assert!(!client.has_capability("SASL"));
        assert_eq!(client.greeting(), "OK \"ready\"");
        let scripts = client.list_scripts().await.unwrap();
        assert_eq!(scripts, [("one".to_string(), false), ("two".to_string(), true)]);
    }
}
