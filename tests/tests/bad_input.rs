//! Bad input against a running node: the real `dataplane` binary, with IMAP, POP3,
//! submission and LMTP listeners in front of a real Dovecot, and a control plane. Over-long
//! lines, oversize and unterminated literals, invalid base64, a client sending one byte a
//! second, 1050 connections against a limit of 50, floods, garbage on the gRPC port: the
//! node answers each with the protocol's error, keeps serving everyone else, never panics,
//! and its memory returns to its baseline.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use switchyard_tests::fleet::{destination_toml, ControlPlane, Node, NODE_TOKEN};
use switchyard_tests::procs::{raise_fd_limit, write_file, PeakRss, Proc};
use switchyard_tests::{eventually, require_or_skip, status, Dovecot, ImapClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

const USER: &str = "alice@example.test";
const PASSWORD: &str = "alicepw";
/// The smallest line limit the config accepts, so an over-long line is cheap to send.
const MAX_LINE: usize = 1024;
const PREAUTH: Duration = Duration::from_secs(2);
/// `max_connections` of the `limited` listener, and how many connections go past it.
const LIMIT: usize = 50;
const EXCESS: usize = 1000;
/// How far above its warmed-up baseline the node's RSS may stay once the abuse is over.
const RSS_TOLERANCE_KIB: u64 = 8 * 1024;
/// The floods send this much; had the node buffered it, RSS would grow by far more.
const FLOOD_BYTES: usize = 2 << 20;
const RSS_PEAK_TOLERANCE_KIB: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const PROPAGATION: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fed_bad_input_keeps_serving_and_returns_to_its_memory_baseline() -> Result<()> {
    if !require_or_skip("dovecot") {
        return Ok(());
    }
    raise_fd_limit(4 * (LIMIT + EXCESS) as u64)?;
    let dovecot = Dovecot::start(&[(USER, PASSWORD)])?;
    let dir = tempfile::tempdir()?;
    let mut fleet = Fleet::start(&dovecot, dir.path()).await?;
    fleet.normal_service().await.context("before any abuse")?;
    let baseline = fleet.warm_up().await?;
    let peak = PeakRss::watch(fleet.node.pid());

    step("over-long lines", fleet.over_long_lines()).await?;
    step("literals", fleet.literals()).await?;
    step("invalid base64", fleet.invalid_base64()).await?;
    step("slow client", fleet.slow_client()).await?;
    step("connection limit", fleet.connection_limit()).await?;
    step("floods", fleet.floods()).await?;
    step("gRPC garbage", fleet.grpc_garbage()).await?;

    let peak = peak.stop().await;
    let after = eventually(Duration::from_secs(20), || async {
        let rss = fleet.node.rss_kib()?;
        ensure!(rss <= baseline + RSS_TOLERANCE_KIB, "RSS {rss} KiB, baseline {baseline} KiB");
        Ok(rss)
    })
    .await;
    let after_kib = fleet.node.rss_kib()?;
    println!("node RSS: baseline {baseline} KiB, peak during abuse {peak} KiB, after {after_kib} KiB");
    after?;
    ensure!(peak <= baseline + RSS_PEAK_TOLERANCE_KIB, "RSS peaked at {peak} KiB from {baseline} KiB");

    fleet.normal_service().await.context("after the abuse")?;
    ensure!(fleet.node.is_running(), "the node exited");
    let health = reqwest::get(format!("http://{}/healthz", fleet.health)).await?;
    ensure!(health.status() == 200, "/healthz answered {}", health.status());
    if let Some(panic) = fleet.node.lines().iter().find(|l| l.contains("panicked")) {
        bail!("the node panicked: {panic}");
    }
    Ok(())
}

/// Runs one kind of abuse and says how long it took.
async fn step(name: &str, abuse: impl Future<Output = Result<()>>) -> Result<()> {
    let started = Instant::now();
    abuse.await.with_context(|| name.to_string())?;
    println!("{name}: ok in {:?}", started.elapsed());
    Ok(())
}

/// The node binary, its listeners, and the control plane it follows.
struct Fleet {
    node: Proc,
    cp: ControlPlane,
    imap: SocketAddr,
    /// IMAP with a 2 s pre-auth timeout.
    short: SocketAddr,
    limited: SocketAddr,
    pop3: SocketAddr,
    submission: SocketAddr,
    lmtp: SocketAddr,
    health: SocketAddr,
}

impl Fleet {
    async fn start(dovecot: &Dovecot, dir: &std::path::Path) -> Result<Fleet> {
        let ports = [("imap", dovecot.imap_port()), ("pop3", dovecot.pop3_port()), ("lmtp", dovecot.lmtp_port())];
        let cp = ControlPlane::start_destinations(&destination_toml("legacy", &ports, ""), "legacy").await?;
        let listener = |id: &str, protocol: &str, extra: &str| {
            format!(
                "[listener.{id}]\nprotocol = \"{protocol}\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n\
                 allow_plaintext_auth = true\nmax_line_length = {MAX_LINE}\n{extra}\n"
            )
        };
        let short = format!("preauth_timeout = \"{}s\"", PREAUTH.as_secs());
        // Long enough for the floods to get through on a loaded machine.
        let long = "preauth_timeout = \"60s\"";
        let toml = format!(
            "[node]\nid = \"dp-bad-input\"\nmetrics_interval = \"1s\"\n[control]\nendpoints = [\"{}\"]\n\
             [health]\nbind = \"127.0.0.1:0\"\n{}{}{}{}{}{}",
            cp.endpoint(),
            listener("imap", "imap", long),
            listener("short", "imap", &short),
            listener("limited", "imap", &format!("max_connections = {LIMIT}\n{long}")),
            listener("pop3", "pop3", long),
            listener("submission", "submission", long),
            listener("lmtp", "lmtp", long),
        );
        let env = [("SWITCHYARD_NODE_TOKEN", NODE_TOKEN), ("RUST_LOG", "info")];
        let node = Proc::spawn("dataplane", &write_file(dir, "dp.toml", &toml)?, &env)?;
        let bound = |id: &'static str| ["listening", id];
        let fleet = Fleet {
            imap: node.bound(&bound("listener=imap ")).await?,
            short: node.bound(&bound("listener=short")).await?,
            limited: node.bound(&bound("listener=limited")).await?,
            pop3: node.bound(&bound("listener=pop3")).await?,
            submission: node.bound(&bound("listener=submission")).await?,
            lmtp: node.bound(&bound("listener=lmtp")).await?,
            health: node.bound(&["health endpoint listening"]).await?,
            node,
            cp,
        };
        fleet.node.wait_for(&["connected to the control plane"]).await?;
        Ok(fleet)
    }

    /// A login over IMAP (on both IMAP listeners) and POP3, EHLO on submission, and a
    /// message delivered over LMTP: everyone else is still served.
    async fn normal_service(&self) -> Result<()> {
        login(self.imap).await?;
        login(self.limited).await?;
        let mut pop3 = Conn::open(self.pop3).await?;
        pop3.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes()).await?;
        pop3.expect("+OK").await?;
        pop3.expect("+OK").await.context("POP3 login")?;
        let mut submission = Conn::open(self.submission).await?;
        submission.send(b"EHLO client.example\r\n").await?;
        submission.expect_reply("250").await?;
        let mut lmtp = Conn::open(self.lmtp).await?;
        for (line, code) in [
            ("LHLO client.example", "250"),
            ("MAIL FROM:<sender@example.test>", "250"),
            (&format!("RCPT TO:<{USER}>"), "250"),
            ("DATA", "354"),
            ("Subject: still served\r\n\r\nhello\r\n.", "250"),
        ] {
            lmtp.send(format!("{line}\r\n").as_bytes()).await?;
            lmtp.expect_reply(code).await.with_context(|| format!("LMTP after {line:?}"))?;
        }
        Ok(())
    }

    /// Normal traffic plus a burst of short connections, then the RSS all later figures
    /// are compared with.
    async fn warm_up(&self) -> Result<u64> {
        for _ in 0..3 {
            self.normal_service().await?;
        }
        let burst = (0..64).map(|_| Conn::open(self.imap));
        drop(all(burst).await?);
        self.over_long_lines().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.node.rss_kib()
    }

    /// A 1 MiB line on every listener kind, then a command that must still be answered.
    async fn over_long_lines(&self) -> Result<()> {
        for flood in self.long_lines() {
            flood.send(1 << 20).await?;
        }
        Ok(())
    }

    fn long_lines(&self) -> [Flood; 4] {
        [
            Flood::new(self.imap, "a1 LOGIN ", "a1 BAD line exceeds 1024 bytes", "a2 NOOP", "a2 OK"),
            Flood::new(self.pop3, "USER ", "-ERR line exceeds 1024 bytes", "CAPA", "+OK"),
            Flood::new(self.submission, "EHLO ", "500 5.5.2 Line too long", "NOOP", "250"),
            Flood::new(self.lmtp, "LHLO ", "500 5.5.2 Line too long", "NOOP", "250"),
        ]
    }

    async fn literals(&self) -> Result<()> {
        let mut conn = Conn::open(self.imap).await?;
        conn.send(b"a1 LOGIN {999999999}\r\n").await?;
        conn.expect("a1 BAD [TOOBIG]").await?;
        conn.send(b"a2 LOGIN {65537}\r\n").await?;
        conn.expect("a2 BAD [TOOBIG]").await?;
        conn.send(b"a3 NOOP\r\n").await?;
        conn.expect("a3 OK").await?;
        // Non-synchronizing: the announced bytes follow at once and are dropped unread.
        conn.send(b"a4 LOGIN {999999999+}\r\n").await?;
        conn.send(&vec![b'y'; 1 << 20]).await?;
        conn.expect("a4 BAD [TOOBIG]").await?;
        // Accepted, then never completed: the pre-auth deadline ends it.
        let mut conn = Conn::open(self.short).await?;
        conn.send(b"a1 LOGIN {60000}\r\n").await?;
        conn.expect("+ Ready").await?;
        conn.send(&[b'z'; 100]).await?;
        conn.expect("* BYE Pre-authentication timeout").await?;
        conn.closed().await
    }

    async fn invalid_base64(&self) -> Result<()> {
        let mut imap = Conn::open(self.imap).await?;
        imap.send(b"a1 AUTHENTICATE PLAIN !!!not-base64!!!\r\n").await?;
        imap.expect("a1 BAD Invalid SASL response: invalid base64").await?;
        imap.send(b"a2 AUTHENTICATE PLAIN\r\n").await?;
        imap.expect("+").await?;
        imap.send(b"%%%%\r\n").await?;
        imap.expect("a2 BAD Invalid SASL response: invalid base64").await?;
        let mut pop3 = Conn::open(self.pop3).await?;
        pop3.send(b"AUTH PLAIN !!!not-base64!!!\r\n").await?;
        pop3.expect("-ERR Invalid SASL response: invalid base64").await?;
        let mut submission = Conn::open(self.submission).await?;
        submission.send(b"EHLO client.example\r\nAUTH PLAIN !!!not-base64!!!\r\n").await?;
        submission.expect_reply("250").await?;
        submission.expect("501 5.5.2 Invalid SASL response: invalid base64").await?;
        Ok(())
    }

    /// One byte a second: cut off at the pre-auth deadline, while others log in.
    async fn slow_client(&self) -> Result<()> {
        let conn = Conn::open(self.short).await?;
        let started = Instant::now();
        let Conn { mut reader, mut writer } = conn;
        let trickle = tokio::spawn(async move {
            for byte in b"a1 NOOP\r\n" {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        self.normal_service().await.context("while a slow client trickles")?;
        let mut rest = String::new();
        timeout(PREAUTH * 5, reader.read_to_string(&mut rest)).await.context("never cut off")??;
        let elapsed = started.elapsed();
        trickle.abort();
        ensure!(rest.starts_with("* BYE Pre-authentication timeout"), "{rest:?}");
        ensure!(elapsed >= PREAUTH - Duration::from_millis(200), "cut off after {elapsed:?}");
        println!("slow client: cut off after {elapsed:?} (preauth_timeout {PREAUTH:?})");
        Ok(())
    }

    /// LIMIT clients hold the `limited` listener; EXCESS more each get the busy reply.
    async fn connection_limit(&self) -> Result<()> {
        let held = all((0..LIMIT).map(|_| Conn::open(self.limited))).await?;
        let mut busy = 0;
        for _ in 0..EXCESS / 100 {
            let replies = all((0..100).map(|_| refused(self.limited))).await?;
            for reply in replies {
                ensure!(reply.starts_with("* BYE [UNAVAILABLE]"), "connection past the limit got {reply:?}");
                busy += 1;
            }
        }
        println!("connection limit: {busy} connections past max_connections = {LIMIT} got the busy reply");
        login(self.imap).await.context("another listener while this one is full")?;
        drop(held);
        // The held sessions end as the node reads their EOF; then the listener admits again.
        eventually(PROPAGATION, || login(self.limited)).await
    }

    /// Concurrent clients sending megabytes the node must not keep: over-long lines on
    /// every listener kind and oversize non-synchronizing literals.
    async fn floods(&self) -> Result<()> {
        let literal = format!("a1 LOGIN {{{FLOOD_BYTES}+}}\r\n");
        let literal = Flood::new(self.imap, &literal, "a1 BAD [TOOBIG]", "a2 NOOP", "a2 OK");
        let floods = (0..13).flat_map(|_| self.long_lines().into_iter().chain([literal.clone()]));
        let count = all(floods.map(|flood| flood.send(FLOOD_BYTES))).await?.len();
        println!("floods: {count} connections sent {} MiB each", FLOOD_BYTES >> 20);
        Ok(())
    }

    /// Random bytes, an HTTP/1 request and a broken HTTP/2 stream on the gRPC port; then a
    /// node can still register and this fleet's node is still connected.
    async fn grpc_garbage(&self) -> Result<()> {
        let mut junk = vec![0u8; 64 << 10];
        junk.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&junk[..4096]);
        let payloads = [junk.clone(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), preface];
        for payload in payloads.iter().cycle().take(30) {
            let mut stream = TcpStream::connect(self.cp.grpc).await?;
            let _ = stream.write_all(payload).await;
            let mut sink = Vec::new();
            let _ = timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
        }
        let mut other = Node::start("dp-after-garbage", &[self.cp.endpoint()], Some(NODE_TOKEN)).await?;
        let connected = |health: SocketAddr| async move {
            let body: serde_json::Value = reqwest::get(format!("http://{health}/readyz")).await?.json().await?;
            ensure!(body["control_plane_connected"] == true, "{body}");
            Ok(())
        };
        eventually(PROPAGATION, || connected(other.health)).await.context("a new node after the garbage")?;
        eventually(PROPAGATION, || connected(self.health)).await.context("the binary's node")?;
        other.stop().await;
        Ok(())
    }
}

/// A LOGIN through the proxy to Dovecot, then LOGOUT.
async fn login(addr: SocketAddr) -> Result<()> {
    let mut imap = ImapClient::connect(addr).await?;
    let tagged = imap.login(USER, PASSWORD).await?;
    ensure!(status(&tagged) == "OK", "IMAP login at {addr}: {tagged} (greeting {:?})", imap.greeting());
    imap.logout().await
}

/// Runs every future as its own task; all their results, or the first error.
async fn all<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl Future<Output = Result<T>> + Send + 'static>,
) -> Result<Vec<T>> {
    let mut set = tokio::task::JoinSet::new();
    futures.into_iter().for_each(|f| drop(set.spawn(f)));
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        out.push(joined??);
    }
    Ok(out)
}

/// A connection past the limit: everything the node sends before closing it.
async fn refused(addr: SocketAddr) -> Result<String> {
    let mut stream = timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
    let mut reply = String::new();
    timeout(IO_TIMEOUT, stream.read_to_string(&mut reply)).await.context("a refused connection stayed open")??;
    Ok(reply)
}

/// A client sending `head`, a long run of bytes without a line end, then `next`.
#[derive(Clone)]
struct Flood {
    addr: SocketAddr,
    head: String,
    error: &'static str,
    next: &'static str,
    ok: &'static str,
}

impl Flood {
    fn new(addr: SocketAddr, head: &str, error: &'static str, next: &'static str, ok: &'static str) -> Flood {
        Flood { addr, head: head.to_string(), error, next, ok }
    }

    /// The error must arrive while the client is still sending (the node does not wait
    /// for the line to end), and the answer to `next` shows the node read every byte.
    async fn send(self, bytes: usize) -> Result<()> {
        let Conn { mut reader, mut writer } = Conn::open(self.addr).await?;
        let (head, next) = (self.head, self.next);
        let sender = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&vec![b'f'; bytes]).await?;
            writer.write_all(format!("\r\n{next}\r\n").as_bytes()).await?;
            anyhow::Ok(writer)
        });
        expect_line(&mut reader, self.error).await?;
        let _writer = sender.await??;
        expect_line(&mut reader, self.ok).await.with_context(|| format!("{next} after {bytes} bytes"))?;
        Ok(())
    }
}

/// A raw client connection whose greeting has been read.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr)).await.context("connect timed out")??;
        let (read, writer) = stream.into_split();
        let mut conn = Conn { reader: BufReader::new(read), writer };
        let greeting = read_line(&mut conn.reader).await.context("greeting")?;
        ensure!(["* OK", "+OK", "220"].iter().any(|g| greeting.starts_with(g)), "greeting {greeting:?}");
        Ok(conn)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// The next line, which must start with `prefix`.
    async fn expect(&mut self, prefix: &str) -> Result<String> {
        expect_line(&mut self.reader, prefix).await
    }

    /// A whole SMTP reply (`250-…` lines up to `250 …`) with code `code`.
    async fn expect_reply(&mut self, code: &str) -> Result<()> {
        loop {
            let line = self.expect(code).await?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    /// The node closes the connection (after anything it still sends).
    async fn closed(mut self) -> Result<()> {
        let mut rest = Vec::new();
        timeout(IO_TIMEOUT, self.reader.read_to_end(&mut rest)).await.context("connection left open")??;
        Ok(())
    }
}

/// One line from the node, without its line end.
async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<String> {
    let mut line = String::new();
    let n = timeout(IO_TIMEOUT, reader.read_line(&mut line)).await.context("no line in time")??;
    ensure!(n > 0, "connection closed");
    Ok(line.trim_end().to_string())
}

/// The next line, which must start with `prefix`.
async fn expect_line(reader: &mut BufReader<OwnedReadHalf>, prefix: &str) -> Result<String> {
    let line = read_line(reader).await.with_context(|| format!("waiting for {prefix:?}"))?;
    ensure!(line.starts_with(prefix), "expected {prefix:?}, got {line:?}");
    Ok(line)
}
