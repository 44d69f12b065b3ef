//! Test helpers for identity forwarding: a node whose destinations use a chosen forwarding
//! mode, and a scripted backend that records every line (and PROXY header) it receives.

use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::codec::proxy::{self, Parsed, ProxyHeader};
use crate::node::Node;
use crate::route::{Resolved, Resolver, RouteError};
use crate::settings::FleetSettings;
use switchyard_proto::v1 as pb;

/// What a recording backend received, one entry per line (CRLF stripped), `connected` per
/// connection and `PROXY <source> <destination>` per PROXY header.
pub(crate) type Lines = Arc<Mutex<Vec<String>>>;

/// Every account goes to the default destination.
struct Unmapped;

impl Resolver for Unmapped {
    fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        async { Ok(Resolved { destination: "legacy".into(), mapped: false }) }.boxed()
    }
}

/// A node named `t` whose destinations have one plain `protocol` endpoint at `port` with
/// `forwarding` (`none`, `proxy`, `xclient`).
pub(crate) fn node(protocol: &str, port: u16, forwarding: &str) -> Arc<Node> {
    let node = Node::new("t".into(), Arc::new(Unmapped), CancellationToken::new());
    let mut settings = crate::settings::tests::sample();
    for d in &mut settings.destinations {
        d.endpoints = vec![pb::Endpoint {
            protocol: protocol.into(),
            port: u32::from(port),
            tls: "plain".into(),
            forwarding: forwarding.into(),
        }];
    }
    node.apply_settings(FleetSettings::try_from(settings).unwrap());
    node
}

/// A backend on port 0: sends `greeting`, records each line and writes `reply(line)` back
/// (nothing when it is empty).
pub(crate) async fn recording_backend<F>(greeting: &'static str, reply: F) -> (u16, Lines)
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lines = Lines::default();
    let (seen, reply) = (Arc::clone(&lines), Arc::new(reply));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(converse(stream, greeting, Arc::clone(&reply), Arc::clone(&seen)));
        }
    });
    (port, lines)
}

async fn converse<F: Fn(&str) -> String>(mut stream: TcpStream, greeting: &str, reply: Arc<F>, seen: Lines) {
    record(&seen, "connected".into());
    if let Some(header) = proxy_header(&mut stream).await {
        record(&seen, header);
    }
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(greeting.as_bytes()).await.unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end_matches("\r\n");
        record(&seen, line.to_owned());
        let answer = reply(line);
        if w.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn record(seen: &Lines, entry: String) {
    seen.lock().unwrap().push(entry);
}

/// A PROXY header at the start of the connection, consumed and described.
async fn proxy_header(stream: &mut TcpStream) -> Option<String> {
    let mut buf = [0u8; 256];
    // The node writes the header in one piece right after connecting; a line-based
    // protocol client sends nothing before the greeting, so an empty peek means no header.
    let n = tokio::time::timeout(std::time::Duration::from_millis(200), stream.peek(&mut buf)).await.ok()?.ok()?;
    match proxy::parse(&buf[..n]).ok()? {
        Parsed::Header(ProxyHeader::Proxied { source, destination }, len) => {
            stream.read_exact(&mut buf[..len]).await.ok()?;
            Some(format!("PROXY {source} {destination}"))
        }
        _ => None,
    }
}

/// The recorded entries so far.
pub(crate) fn seen(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap().clone()
}
