//! The fast backend: a minimal scripted IMAP responder (greeting, CAPABILITY, AUTHENTICATE
//! PLAIN with or without initial response, LOGIN (also with literals), SELECT, FETCH of a
//! fixed-size literal,
//! NOOP, LOGOUT) that accepts any credentials. It runs as its own process
//! (`switchyard-bench backend`) so its CPU and file descriptors are counted apart from the
//! load client's and the node's.

use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GREETING: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] bench backend ready\r\n";
const SELECTED: &[u8] = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n\
* 20 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n* OK [UIDNEXT 21] Predicted next UID\r\n";
/// Longest command line accepted; the load client never sends more than a few hundred bytes.
const MAX_LINE: usize = 16 * 1024;

/// Serves on `127.0.0.1:0` forever; logs `imap backend listening addr=…` on stderr for the bench.
pub async fn serve(fetch_size: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("imap backend listening addr={}", listener.local_addr()?);
    let body: Arc<[u8]> = message(fetch_size).into();
    loop {
        let (stream, _) = listener.accept().await?;
        let body = Arc::clone(&body);
        tokio::spawn(async move {
            let _ = session(stream, body).await;
        });
    }
}

/// A message of exactly `size` bytes: headers, then 76-column lines of text.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <bench@example.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog while the proxy bridges bytes..\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m.truncate(size.max(2));
    let n = m.len();
    m[n - 2..].copy_from_slice(b"\r\n");
    m
}

/// What the session waits for next.
enum State {
    Command,
    /// The SASL response to `AUTHENTICATE PLAIN` sent without initial response.
    SaslResponse(Vec<u8>),
}

async fn session(mut stream: TcpStream, body: Arc<[u8]>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(GREETING).await?;
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let mut state = State::Command;
    let mut chunk = [0u8; 1024];
    // A command that carries literals (nginx logs in with `LOGIN {n}` literals): its text
    // so far, each literal replaced by `x`, and the literal bytes still to skip.
    let mut command = Vec::new();
    let mut skip = 0usize;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut close = false;
        loop {
            let take = skip.min(pending.len() - consumed);
            (consumed, skip) = (consumed + take, skip - take);
            if skip > 0 {
                break;
            }
            let Some(end) = pending[consumed..].windows(2).position(|w| w == b"\r\n") else { break };
            let line = &pending[consumed..consumed + end];
            consumed += end + 2;
            if let Some(len) = crate::client::literal_len(line) {
                let open = line.iter().rposition(|&b| b == b'{').unwrap_or(0);
                command.extend_from_slice(&line[..open]);
                command.push(b'x');
                skip = len;
                if !line.ends_with(b"+}") {
                    out.extend_from_slice(b"+ Ready for literal data\r\n");
                    stream.write_all(&out).await?;
                    out.clear();
                }
                continue;
            }
            let reply = if command.is_empty() {
                respond(line, state)
            } else {
                command.extend_from_slice(line);
                let reply = respond(&command, state);
                command.clear();
                reply
            };
            state = reply.0;
            match reply.1 {
                Reply::Bytes(b) => out.extend_from_slice(&b),
                Reply::Fetch(tag) => {
                    stream.write_all(&out).await?;
                    out.clear();
                    let head = format!("* 1 FETCH (BODY[] {{{}}}\r\n", body.len());
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(&body).await?;
                    out.extend_from_slice(b")\r\n");
                    out.extend_from_slice(&tag);
                    out.extend_from_slice(b" OK FETCH completed\r\n");
                }
                Reply::Bye(b) => {
                    out.extend_from_slice(&b);
                    close = true;
                    break;
                }
            }
        }
        pending.drain(..consumed);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close || pending.len() + command.len() > MAX_LINE {
            return stream.shutdown().await;
        }
    }
}

enum Reply {
    Bytes(Vec<u8>),
    /// The FETCH literal is written straight from the shared body.
    Fetch(Vec<u8>),
    /// Answer, then close.
    Bye(Vec<u8>),
}

fn tagged(tag: &[u8], text: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(tag.len() + text.len() + 3);
    v.extend_from_slice(tag);
    v.push(b' ');
    v.extend_from_slice(text);
    v.extend_from_slice(b"\r\n");
    v
}

fn respond(line: &[u8], state: State) -> (State, Reply) {
    if let State::SaslResponse(tag) = state {
        let text: &[u8] = if line == b"*" { b"BAD Authentication cancelled" } else { b"OK Logged in" };
        return (State::Command, Reply::Bytes(tagged(&tag, text)));
    }
    let mut words = line.split(|&b| b == b' ');
    let tag = words.next().unwrap_or_default().to_vec();
    let command = words.next().unwrap_or_default().to_ascii_uppercase();
    let command = if command == b"UID" { words.next().unwrap_or_default().to_ascii_uppercase() } else { command };
    let reply = match command.as_slice() {
        b"AUTHENTICATE" => {
            let _mechanism = words.next();
            if words.next().is_none() {
                return (State::SaslResponse(tag), Reply::Bytes(b"+ \r\n".to_vec()));
            }
            tagged(&tag, b"OK Logged in")
        }
        b"LOGIN" => tagged(&tag, b"OK Logged in"),
        b"CAPABILITY" => {
            let mut v = b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\n".to_vec();
            v.extend_from_slice(&tagged(&tag, b"OK CAPABILITY completed"));
            v
        }
        b"SELECT" | b"EXAMINE" => {
            let mut v = SELECTED.to_vec();
            v.extend_from_slice(&tagged(&tag, b"OK [READ-WRITE] SELECT completed"));
            v
        }
        b"FETCH" => return (State::Command, Reply::Fetch(tag)),
        b"LOGOUT" => {
            let mut v = b"* BYE Logging out\r\n".to_vec();
            v.extend_from_slice(&tagged(&tag, b"OK LOGOUT completed"));
            return (State::Command, Reply::Bye(v));
        }
        _ => tagged(&tag, b"OK done"),
    };
    (State::Command, Reply::Bytes(reply))
}
