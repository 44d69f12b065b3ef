//! `MaybeTls`: one stream type for either leg, plain or encrypted, so a session keeps a
//! single field and swaps the plain variant for the encrypted one on STARTTLS.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

use super::{Connector, TlsAcceptor};
use crate::settings::Destination;

/// A TCP connection that may carry TLS: `Server` is a client leg the node accepted TLS
/// on, `Client` a backend leg the node started TLS on. The TLS variants are boxed: they
/// carry rustls' buffers, and a session holds this by value.
#[derive(Debug)]
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Server(Box<server::TlsStream<TcpStream>>),
    Client(Box<client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    pub(crate) fn is_tls(&self) -> bool {
        !matches!(self, MaybeTls::Plain(_))
    }

    /// The peer's address (tests check what a leg is connected to).
    #[cfg(test)]
    pub(crate) fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            MaybeTls::Plain(s) => s.peer_addr(),
            MaybeTls::Server(s) => s.get_ref().0.peer_addr(),
            MaybeTls::Client(s) => s.get_ref().0.peer_addr(),
        }
    }

    /// The server name the client asked for (client leg with SNI only).
    #[cfg(test)]
    pub(crate) fn sni(&self) -> Option<&str> {
        match self {
            MaybeTls::Server(s) => s.get_ref().1.server_name(),
            _ => None,
        }
    }

    /// Upgrades a plain client leg (implicit TLS, or after the STARTTLS reply was sent).
    /// An already encrypted stream is an error (and is dropped): check
    /// [`is_tls`](Self::is_tls) before offering STARTTLS.
    pub(crate) async fn accept(self, acceptor: &TlsAcceptor) -> io::Result<MaybeTls> {
        let plain = self.into_plain()?;
        Ok(MaybeTls::Server(Box::new(acceptor.accept(plain).await?)))
    }

    /// Upgrades a plain backend leg with `dest`'s TLS settings (errors as
    /// [`Connector::connect`]; an already encrypted stream as in [`accept`](Self::accept)).
    pub(crate) async fn connect(self, connector: &Connector, dest: &Destination) -> io::Result<MaybeTls> {
        let plain = self.into_plain()?;
        Ok(MaybeTls::Client(Box::new(connector.connect(dest, plain).await?)))
    }

    fn into_plain(self) -> io::Result<TcpStream> {
        match self {
            MaybeTls::Plain(s) => Ok(s),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "the stream already carries TLS")),
        }
    }
}

impl From<TcpStream> for MaybeTls {
    fn from(stream: TcpStream) -> Self {
        MaybeTls::Plain(stream)
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
