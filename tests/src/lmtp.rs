//! A minimal LMTP client for end-to-end tests: connects, greets, opens a transaction,
//! and reads one reply per command (pipelined commands through `writer`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long one reply may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A minimal LMTP client: one reply per command, multi-line replies folded to their last line.
pub struct Lmtp {
    reader: BufReader<OwnedReadHalf>,
    /// For pipelining: commands written here are answered by [`Lmtp::reply`] in order.
    pub writer: OwnedWriteHalf,
}

impl Lmtp {
    /// Connected, greeted, LHLO and MAIL accepted.
    pub async fn transaction(addr: SocketAddr) -> Result<Lmtp> {
        let (read, writer) = TcpStream::connect(addr).await?.into_split();
        let mut lmtp = Lmtp { reader: BufReader::new(read), writer };
        let greeting = lmtp.reply().await?;
        ensure!(greeting.starts_with("220"), "greeting {greeting:?}");
        let hello = lmtp.command("LHLO client.example").await?;
        ensure!(hello.starts_with("250"), "LHLO answered {hello:?}");
        lmtp.mail().await?;
        Ok(lmtp)
    }

    pub async fn mail(&mut self) -> Result<()> {
        let reply = self.command("MAIL FROM:<sender@example.org>").await?;
        ensure!(reply.starts_with("250"), "MAIL answered {reply:?}");
        Ok(())
    }

    /// RSET and a new MAIL.
    pub async fn restart(&mut self) -> Result<()> {
        let reply = self.command("RSET").await?;
        ensure!(reply.starts_with("250"), "RSET answered {reply:?}");
        self.mail().await
    }

    pub async fn command(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// The reply's last line, with runs of 16 `x` (test padding) taken out so long
    /// addresses stay readable in messages.
    pub async fn reply(&mut self) -> Result<String> {
        loop {
            let mut line = String::new();
            let n = timeout(IO_TIMEOUT, self.reader.read_line(&mut line)).await.context("no reply")??;
            ensure!(n > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().replace(&"x".repeat(16), ""));
            }
        }
    }

    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}
