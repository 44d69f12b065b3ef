//! The peers an operator would pick instead, in front of the same backend: nginx's mail
//! proxy (Debian `nginx` + `libnginx-mod-mail`) with a minimal `auth_http` responder in
//! this process, and HAProxy in TCP mode (no per-account routing: the floor for a hop),
//! which also stands in front of LMTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::procs::Proc;

const NGINX: &str = "/usr/sbin/nginx";
const NGINX_MAIL: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";
const HAPROXY: &str = "/usr/sbin/haproxy";

/// A peer proxy process and the address it serves IMAP on.
pub struct Peer {
    pub name: &'static str,
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Whichever peers are installed, each in front of `backend`.
pub struct Peers {
    pub list: Vec<Peer>,
    auth: Option<JoinHandle<()>>,
}

impl Drop for Peers {
    fn drop(&mut self) {
        if let Some(auth) = self.auth.take() {
            auth.abort();
        }
    }
}

/// Whether the peers can run here (scripts/bench.sh installs them).
pub fn available() -> bool {
    Path::new(NGINX).exists() && Path::new(NGINX_MAIL).exists() && Path::new(HAPROXY).exists()
}

pub async fn start(dir: &Path, backend: SocketAddr) -> Result<Peers> {
    let mut peers = Peers { list: Vec::new(), auth: None };
    if !available() {
        return Ok(peers);
    }
    let auth = TcpListener::bind("127.0.0.1:0").await?;
    let auth_addr = auth.local_addr()?;
    peers.auth = Some(tokio::spawn(auth_http(auth, backend)));
    peers.list.push(nginx(dir, auth_addr).await?);
    peers.list.push(haproxy(dir, "imap", backend, "* OK").await?);
    Ok(peers)
}

/// HAProxy alone in front of an LMTP `backend` (nginx's mail module has no LMTP), when
/// installed.
pub async fn start_lmtp(dir: &Path, backend: SocketAddr) -> Result<Peers> {
    let mut peers = Peers { list: Vec::new(), auth: None };
    if Path::new(HAPROXY).exists() {
        peers.list.push(haproxy(dir, "lmtp", backend, "220").await?);
    }
    Ok(peers)
}

async fn nginx(dir: &Path, auth: SocketAddr) -> Result<Peer> {
    let d = dir.display().to_string();
    let err = format!("{d}/nginx-error.log");
    let spawn = |port: u16| {
        // Worker count = cores, as Switchyard's runtime; one auth_http request per login.
        let conf = format!(
            "load_module {NGINX_MAIL};\nworker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {err} warn;\n\
             worker_rlimit_nofile 20000;\nevents {{ worker_connections 10000; }}\n\
             mail {{\n  auth_http {auth}/auth;\n  imap_auth plain login;\n  server {{\n    listen 127.0.0.1:{port};\n    protocol imap;\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let path = path.to_string_lossy().into_owned();
        Proc::spawn("nginx", Path::new(NGINX), &["-c", &path, "-e", &err], &[], dir, None)
    };
    let (proc, addr) = serve_on_free_port(spawn, "* OK").await?;
    Ok(Peer { name: "nginx mail", proc, addr })
}

/// HAProxy in TCP mode in front of `backend`, whose greeting starts with `greeting`;
/// `tag` names its files in `dir`.
async fn haproxy(dir: &Path, tag: &str, backend: SocketAddr, greeting: &str) -> Result<Peer> {
    let spawn = |port: u16| {
        let conf = format!(
            "global\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30m\n  timeout server 30m\n\
             frontend front\n  bind 127.0.0.1:{port}\n  default_backend back\nbackend back\n  server s1 {backend}\n"
        );
        let path = dir.join(format!("haproxy-{tag}.cfg"));
        std::fs::write(&path, conf)?;
        let path = path.to_string_lossy().into_owned();
        Proc::spawn(&format!("haproxy-{tag}"), Path::new(HAPROXY), &["-f", &path, "-db"], &[], dir, None)
    };
    let (proc, addr) = serve_on_free_port(spawn, greeting).await?;
    Ok(Peer { name: "HAProxy TCP", proc, addr })
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a peer on a port that was free a moment ago (nginx and HAProxy do not report
/// what they bound) and waits for the backend's greeting through it.
async fn serve_on_free_port(spawn: impl Fn(u16) -> Result<Proc>, greeting: &str) -> Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut proc = spawn(port)?;
    wait_greeting(addr, &mut proc, greeting).await?;
    Ok((proc, addr))
}

/// Polls until `addr` answers with a greeting starting with `greeting`, while `proc` runs.
async fn wait_greeting(addr: SocketAddr, proc: &mut Proc, greeting: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // What the last try saw, for the error message.
        let seen = match TcpStream::connect(addr).await {
            Ok(mut s) => {
                let mut buf = [0u8; 64];
                match s.read(&mut buf).await {
                    Ok(n) if n > 4 && buf.starts_with(greeting.as_bytes()) => return Ok(()),
                    Ok(n) => format!("read {:?}", String::from_utf8_lossy(&buf[..n])),
                    Err(e) => format!("read: {e}"),
                }
            }
            Err(e) => format!("connect: {e}"),
        };
        if let Some(exit) = proc.exited() {
            bail!("{exit}");
        }
        if Instant::now() > deadline {
            bail!("{} did not greet on {addr} within 10 s (last try: {seen}):\n{}", proc.name, proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// nginx's `auth_http`: every login is allowed and sent to `backend`. One request per
/// connection (nginx sends HTTP/1.0 and closes).
async fn auth_http(listener: TcpListener, backend: SocketAddr) {
    let reply = format!(
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
        backend.ip(),
        backend.port()
    );
    let reply: std::sync::Arc<[u8]> = reply.into_bytes().into();
    while let Ok((mut stream, _)) = listener.accept().await {
        let reply = std::sync::Arc::clone(&reply);
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(512);
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(&reply).await;
        });
    }
}
