//! Raw line-protocol clients for the client-leg tests: a connection read line by line with
//! a timeout, a client that pipelines commands and never reads its replies (a tiny
//! receive window), and the real `dataplane` binary started with hand-written tables.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::fleet::NODE_TOKEN;
use crate::procs::{write_file, Proc};

/// How long one line may take to arrive.
const LINE_WAIT: Duration = Duration::from_secs(10);

/// A plain TCP client of a line protocol.
pub struct LineConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl LineConn {
    /// Connects without reading anything.
    pub async fn connect(addr: SocketAddr) -> Result<LineConn> {
        let stream = timeout(LINE_WAIT, TcpStream::connect(addr)).await.context("connect timed out")??;
        let (reader, writer) = stream.into_split();
        Ok(LineConn { reader: BufReader::new(reader), writer })
    }

    /// Connects and reads the greeting (its first line).
    pub async fn open(addr: SocketAddr) -> Result<(LineConn, String)> {
        let mut conn = Self::connect(addr).await?;
        let greeting = conn.line().await?.context("closed before the greeting")?;
        Ok((conn, greeting))
    }

    pub async fn send(&mut self, text: &str) -> Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// The next line without its line end; `None` once the server closed the connection.
    pub async fn line(&mut self) -> Result<Option<String>> {
        self.line_within(LINE_WAIT).await
    }

    pub async fn line_within(&mut self, wait: Duration) -> Result<Option<String>> {
        let mut line = String::new();
        let n = timeout(wait, self.reader.read_line(&mut line)).await.context("no line in time")??;
        Ok((n > 0).then(|| line.trim_end().to_string()))
    }

    /// The next line, which must start with `prefix`.
    pub async fn expect(&mut self, prefix: &str) -> Result<String> {
        let line = self.line().await?.with_context(|| format!("closed while waiting for {prefix:?}"))?;
        ensure!(line.starts_with(prefix), "expected {prefix:?}, got {line:?}");
        Ok(line)
    }

    /// A whole SMTP reply (`250-…` up to `250 …`) whose code is `code`; its last line.
    pub async fn expect_reply(&mut self, code: &str) -> Result<String> {
        loop {
            let line = self.expect(code).await?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    }

    /// The TCP stream back, for a TLS handshake after STARTTLS; nothing may be buffered.
    pub fn into_stream(self) -> Result<TcpStream> {
        ensure!(self.reader.buffer().is_empty(), "bytes after the last line read: {:?}", self.reader.buffer());
        Ok(self.reader.into_inner().reunite(self.writer)?)
    }

    /// Every line the server still sends until it closes, waiting at most `within`.
    pub async fn rest(mut self, within: Duration) -> Result<Vec<String>> {
        let mut text = String::new();
        timeout(within, self.reader.read_to_string(&mut text)).await.context("connection left open")??;
        Ok(text.lines().map(str::to_string).collect())
    }
}

/// A client that pipelines one command over and over and never reads a reply, with a
/// receive buffer so small that the server's replies back up at once.
pub struct Stuffer {
    writer: JoinHandle<()>,
}

impl Stuffer {
    /// Connects to `addr` and sends `count` copies of `command` (CRLF added) in the
    /// background.
    pub async fn start(addr: SocketAddr, command: &str, count: usize) -> Result<Stuffer> {
        let socket = TcpSocket::new_v4()?;
        // Set before connecting, so the window the server sees is small from the start.
        socket.set_recv_buffer_size(1024)?;
        let stream = timeout(LINE_WAIT, socket.connect(addr)).await.context("connect timed out")??;
        let batch = format!("{command}\r\n").repeat(count);
        let writer = tokio::spawn(async move {
            let (_unread, mut writer) = stream.into_split();
            // Blocks once the server stops reading; fails once it closed the connection.
            let _ = writer.write_all(batch.as_bytes()).await;
            // Keeps the connection (and the unread replies) until the test drops it.
            std::future::pending::<()>().await;
        });
        Ok(Stuffer { writer })
    }
}

impl Drop for Stuffer {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// The real `dataplane` binary with listener (and certificate) tables written by the
/// caller, following the control plane at `endpoint`.
pub struct DataplaneProc {
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl DataplaneProc {
    /// Starts it with `node_keys` added to `[node]` and waits until its listeners are bound.
    pub async fn start(id: &str, endpoint: &str, node_keys: &str, tables: &str) -> Result<DataplaneProc> {
        let dir = tempfile::tempdir()?;
        let toml = format!(
            "[node]\nid = \"{id}\"\nmetrics_interval = \"1s\"\n{node_keys}\n\
             [control]\nendpoints = [\"{endpoint}\"]\nresolve_timeout = \"2s\"\n\
             [health]\nbind = \"127.0.0.1:0\"\n{tables}"
        );
        let env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN), ("RUST_LOG", "info")];
        let proc = Proc::spawn("dataplane", &write_file(dir.path(), "dp.toml", &toml)?, &env)?;
        proc.wait_for(&["health endpoint listening"]).await?;
        Ok(DataplaneProc { proc, _dir: dir })
    }

    /// The address listener `id` is bound to.
    pub async fn listener(&self, id: &str) -> Result<SocketAddr> {
        self.proc.bound(&["listening", &format!("listener={id} ")]).await
    }
}
