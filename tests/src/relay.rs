//! A TCP relay on 127.0.0.1:0 in front of a server that holds the server's first bytes (its
//! greeting) for a while: a slow backend, so that logins through it stay "opening" long
//! enough for a test to race them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Relays every connection to `target`, the first bytes from it `delay` late. Stops when
/// dropped.
pub struct SlowGreeting {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SlowGreeting {
    pub async fn start(target: SocketAddr, delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = relay(client, server, delay).await;
                    }
                });
            }
        });
        Ok(SlowGreeting { addr, task })
    }
}

impl Drop for SlowGreeting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, delay: Duration) -> std::io::Result<()> {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let upstream = async {
        tokio::io::copy(&mut from_client, &mut to_server).await?;
        to_server.shutdown().await
    };
    let downstream = async {
        let mut first = vec![0; 4096];
        let n = from_server.read(&mut first).await?;
        tokio::time::sleep(delay).await;
        to_client.write_all(&first[..n]).await?;
        tokio::io::copy(&mut from_server, &mut to_client).await?;
        to_client.shutdown().await
    };
    // Either side closing ends the relay: the other half is dropped with it.
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}
