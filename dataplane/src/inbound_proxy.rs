//! Reading the PROXY protocol header a trusted load balancer puts before a client
//! connection, so sessions, logs and identity forwarding see the real client.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::codec::proxy::{self, Parsed, ProxyHeader};
use crate::config::{ListenerConfig, ProxyProtocol};

/// With `optional`, how long a trusted peer may stay silent before the session starts
/// without a header (mail clients wait for the greeting; load balancers send at once).
const OPTIONAL_WAIT: Duration = Duration::from_millis(500);
/// A header split across packets is re-examined after this pause.
const PARTIAL_PAUSE: Duration = Duration::from_millis(10);

/// The client address for a connection from `peer`: from the PROXY header when the
/// listener expects one and `peer` is trusted, else `peer` itself. Only the header's
/// bytes are consumed; an error means the connection must be closed. The wait for the
/// header ends with the pre-auth budget (`budget`), which the session goes on drawing on.
pub(crate) async fn client_address(
    stream: &mut TcpStream,
    config: &ListenerConfig,
    peer: SocketAddr,
    budget: Instant,
) -> io::Result<SocketAddr> {
    if !config.proxy_from(peer.ip()) {
        return Ok(peer);
    }
    let required = config.proxy_protocol == ProxyProtocol::Required;
    let deadline = if required { budget } else { budget.min(Instant::now() + OPTIONAL_WAIT) };
    let mut buf = [0u8; 640];
    loop {
        let n = match timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(peeked) => peeked?,
            Err(_) if required => return Err(io::Error::new(io::ErrorKind::TimedOut, "no PROXY header")),
            Err(_) => return Ok(peer),
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match proxy::parse(&buf[..n]) {
            Ok(Parsed::Header(header, len)) => {
                let mut consumed = vec![0u8; len];
                stream.read_exact(&mut consumed).await?;
                return Ok(match header {
                    ProxyHeader::Proxied { source, .. } => source,
                    ProxyHeader::Local => peer,
                });
            }
            Ok(Parsed::Absent) if required => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "PROXY header required"));
            }
            Ok(Parsed::Absent) => return Ok(peer),
            Ok(Parsed::Incomplete) if Instant::now() < deadline => tokio::time::sleep(PARTIAL_PAUSE).await,
            Ok(Parsed::Incomplete) => return Err(io::Error::new(io::ErrorKind::TimedOut, "partial PROXY header")),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
