//! What a login's end does to its destination's breaker, against a scripted backend
//! that greets and then answers with a verdict, stays silent, or hangs up: a verdict is
//! health, silence past `login_timeout` a failure, a hang-up settles nothing; and a
//! half-open breaker's probe is judged by its login, not by its greeting.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{settle, settle_set_up, Dialect, Leg, Login, LoginDialect, Verdict};
use crate::breaker::Breaker;
use crate::codec::mechanism::Credential;
use crate::error::{Blame, Error, Result};
use crate::identity::Identity;
use crate::node::Node;
use crate::route::{Resolved, Resolver, RouteError};
use crate::session::SessionCtx;
use crate::settings::{BreakerSettings, FleetSettings};

const LOGIN_TIMEOUT: Duration = Duration::from_millis(300);
const COOLDOWN: Duration = Duration::from_millis(400);

const VERDICT: u8 = 0;
const SILENT: u8 = 1;
const HANG_UP: u8 = 2;

/// The least of a protocol: a greeting line, then one line out and one verdict line back.
struct Minimal;

impl Dialect for Minimal {
    async fn greet(&mut self, leg: &mut Leg) -> Result<()> {
        leg.read_line().await.map(drop)
    }

    async fn starttls(&mut self, _leg: &mut Leg) -> Result<()> {
        unreachable!("the endpoint is plain")
    }
}

impl LoginDialect for Minimal {
    async fn authenticate(&mut self, conn: &mut Leg, credential: &Credential) -> Result<Verdict> {
        conn.send(format!("S1 AUTHENTICATE PLAIN {}\r\n", credential.replay().1).as_bytes()).await?;
        let line = conn.read_line().await?;
        Ok(Verdict { accepted: line.starts_with(b"S1 OK"), lines: vec![line] })
    }
}

/// Everyone goes to `legacy`.
struct Everyone;

impl Resolver for Everyone {
    fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Resolved, RouteError>> {
        async { Ok(Resolved { destination: "legacy".into(), mapped: false }) }.boxed()
    }
}

/// A backend whose answer to AUTHENTICATE is `mode`'s: `NO [AUTHENTICATIONFAILED]`,
/// nothing (the connection stays open), or a hang-up. Counts connections.
struct Scripted {
    port: u16,
    mode: Arc<AtomicU8>,
    connections: Arc<AtomicU32>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, connections) = (Arc::new(AtomicU8::new(VERDICT)), Arc::new(AtomicU32::new(0)));
        let (m, c) = (Arc::clone(&mode), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let mode = m.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    s.write_all(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] scripted\r\n").await.unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match mode {
                        VERDICT => {
                            s.write_all(b"S1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n").await.unwrap()
                        }
                        SILENT => while s.read(&mut buf).await.is_ok_and(|n| n > 0) {},
                        _ => {}
                    }
                });
            }
        });
        Scripted { port, mode, connections }
    }

    fn answer(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn connections(&self) -> u32 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A session context of a node whose only destination `legacy` is `backend`.
fn ctx(backend: &Scripted, threshold: u32) -> SessionCtx {
    let node = Node::new("t".into(), Arc::new(Everyone), CancellationToken::new());
    let mut settings = crate::settings::tests::sample();
    let breaker = settings.breaker.as_mut().unwrap();
    breaker.failure_threshold = threshold;
    breaker.cooldown_ms = COOLDOWN.as_millis() as u64;
    breaker.connect_retries = 0;
    breaker.login_timeout_ms = Some(LOGIN_TIMEOUT.as_millis() as u64);
    settings.destinations.retain(|d| d.id == "legacy");
    settings.destinations[0].endpoints[0].port = u32::from(backend.port);
    node.apply_settings(FleetSettings::try_from(settings).unwrap());
    let toml = "[listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n\
                [control]\nendpoints = [\"http://127.0.0.1:1\"]\n";
    let listener = crate::config::Config::from_toml_str(toml).unwrap().listener["imap"].clone();
    let addr = "127.0.0.1:1".parse().unwrap();
    SessionCtx {
        node,
        listener: Arc::new(listener),
        client: addr,
        local: addr,
        tls: None,
        accepted: tokio::time::Instant::now(),
    }
}

/// One login; `Ok(true)` for a verdict (always a rejection here), else the error text.
async fn login(ctx: &SessionCtx) -> std::result::Result<bool, String> {
    let identity = Identity::new(ctx.client, ctx.local);
    match ctx.login(&mut Minimal, &Credential::password("alice", "secret"), &identity).await {
        Ok(Login::Rejected(_)) => Ok(true),
        Ok(Login::Accepted { .. }) => Ok(false),
        Err(e) if e.blame() != Blame::Client => Err(e.to_string()),
        Err(e) => panic!("not a temporary failure: {e}"),
    }
}

fn health(ctx: &SessionCtx) -> (u32, bool) {
    let h = ctx.node.breakers.get("legacy").health();
    (h.consecutive_failures, h.down)
}

#[tokio::test]
async fn silence_past_the_login_timeout_is_a_failure_a_verdict_is_health() {
    let backend = Scripted::start().await;
    let ctx = ctx(&backend, 2);
    backend.answer(SILENT);
    let started = tokio::time::Instant::now();
    let err = login(&ctx).await.unwrap_err();
    assert!(err.contains("no verdict within the login timeout (300ms)"), "{err}");
    let took = started.elapsed();
    assert!(took >= LOGIN_TIMEOUT && took < LOGIN_TIMEOUT * 3, "{took:?}");
    assert_eq!(health(&ctx), (1, false));
    // A wrong password is an answer: the backend works, the count starts over.
    backend.answer(VERDICT);
    assert_eq!(login(&ctx).await, Ok(true));
    assert_eq!(health(&ctx), (0, false));
    backend.answer(SILENT);
    login(&ctx).await.unwrap_err();
    login(&ctx).await.unwrap_err();
    assert_eq!(health(&ctx), (2, true));
    let err = login(&ctx).await.unwrap_err();
    assert!(err.contains("circuit breaker open"), "{err}");
    assert_eq!(backend.connections(), 4, "the open breaker dialled nobody");
}

#[tokio::test]
async fn a_hang_up_after_the_greeting_settles_nothing() {
    let backend = Scripted::start().await;
    let ctx = ctx(&backend, 2);
    backend.answer(SILENT);
    login(&ctx).await.unwrap_err();
    backend.answer(HANG_UP);
    for _ in 0..3 {
        let err = login(&ctx).await.unwrap_err();
        assert!(err.contains("no verdict:"), "{err}");
    }
    // A client can make a backend hang up (an oversized credential): neither a failure
    // (that would let it open the breaker) nor a sign of health.
    assert_eq!(health(&ctx), (1, false));
}

#[tokio::test]
async fn the_half_open_probe_is_judged_by_its_login() {
    let backend = Scripted::start().await;
    let ctx = ctx(&backend, 1);
    backend.answer(SILENT);
    login(&ctx).await.unwrap_err();
    assert_eq!(health(&ctx), (1, true));
    tokio::time::sleep(COOLDOWN).await;
    // The probe greets fine but its login times out: open again for a whole cooldown.
    login(&ctx).await.unwrap_err();
    assert_eq!(health(&ctx), (2, true), "a probe that greeted closed the breaker before its login ended");
    assert!(login(&ctx).await.unwrap_err().contains("circuit breaker open"));
    tokio::time::sleep(COOLDOWN).await;
    // A probe that ends without an outcome leaves the next login the probe.
    backend.answer(HANG_UP);
    login(&ctx).await.unwrap_err();
    assert_eq!(health(&ctx), (2, true));
    backend.answer(VERDICT);
    assert_eq!(login(&ctx).await, Ok(true), "the next login was let through as the probe");
    assert_eq!(health(&ctx), (0, false));
    assert_eq!(backend.connections(), 4);
}

/// A breaker that takes three failures to open, failed once: a success brings the count
/// to 0, a failure to 2, and an unsettled permit leaves it at 1.
fn failed_once() -> Arc<Breaker> {
    let settings = BreakerSettings {
        failure_threshold: 3,
        cooldown: COOLDOWN,
        connect_timeout: LOGIN_TIMEOUT,
        connect_retries: 0,
        login_timeout: LOGIN_TIMEOUT,
    };
    let breaker = Arc::new(Breaker::new(&settings, Arc::new(Notify::new())));
    breaker.admit().unwrap().failure();
    breaker
}

#[tokio::test]
async fn a_login_is_settled_by_its_verdict_or_a_backend_timeout_only() {
    let verdict = || Ok(Verdict { accepted: false, lines: vec![b"S1 NO".to_vec()] });
    let cases: [(&str, Result<Verdict>, u32); 6] = [
        ("verdict", verdict(), 0),
        ("backend timeout", Err(Error::backend_timeout("legacy", "no reply in time")), 2),
        ("backend hang-up", Err(Error::backend("legacy", "closed the connection")), 1),
        ("backend garbage", Err(Error::backend("legacy", "unexpected AUTH reply")), 1),
        ("client", Err(Error::Client("gone".into())), 1),
        ("node", Err(Error::Node("closing".into())), 1),
    ];
    for (case, answer, failures) in cases {
        let breaker = failed_once();
        let settled = settle(breaker.admit().unwrap(), answer, LOGIN_TIMEOUT);
        assert_eq!(breaker.health().consecutive_failures, failures, "{case}");
        if let Err(e) = settled {
            assert!(e.blame() != Blame::Backend || e.to_string().contains("no verdict"), "{case}: {e}");
        }
    }
    let breaker = failed_once();
    let e = settle(breaker.admit().unwrap(), Err(Error::backend_timeout("legacy", "x")), LOGIN_TIMEOUT).unwrap_err();
    assert!(e.to_string().contains("no verdict within the login timeout (300ms)"), "{e}");
}

#[tokio::test]
async fn an_establishment_fails_its_permit_only_for_the_backends_fault() {
    let cases: [(&str, Error, u32); 5] = [
        ("backend", Error::backend("legacy", "unexpected greeting"), 2),
        ("backend timeout", Error::backend_timeout("legacy", "TLS handshake timed out"), 2),
        ("node's TLS set-up", Error::Node("TLS set-up: unreadable tls_client_key".into()), 1),
        ("client", Error::Client("gone".into()), 1),
        ("settings", Error::unavailable("legacy", "no imap endpoint"), 1),
    ];
    for (case, error, failures) in cases {
        let breaker = failed_once();
        assert!(settle_set_up(breaker.admit().unwrap(), Err(error)).is_err());
        assert_eq!(breaker.health().consecutive_failures, failures, "{case}");
    }
}

/// A leg to a server that sends `script`, then closes (`close`) or stays silent.
async fn scripted_leg(script: &'static [u8], close: bool, deadline: Duration) -> Leg {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(script).await.unwrap();
        if !close {
            let mut buf = [0u8; 64];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        }
    });
    let stream = crate::tls::MaybeTls::Plain(tokio::net::TcpStream::connect(addr).await.unwrap());
    Leg::new(stream, tokio::time::Instant::now() + deadline, "legacy")
}

#[tokio::test]
async fn the_legs_own_errors_are_the_backends_and_only_silence_is_a_timeout() {
    let mut closed = scripted_leg(b"* OK hi\r\n", true, Duration::from_secs(5)).await;
    assert_eq!(closed.read_line().await.unwrap(), b"* OK hi");
    let e = closed.read_line().await.unwrap_err();
    assert_eq!((e.blame(), e.timed_out()), (Blame::Backend, false), "{e}");

    let mut silent = scripted_leg(b"", false, Duration::from_millis(50)).await;
    let e = silent.read_line().await.unwrap_err();
    assert_eq!((e.blame(), e.timed_out()), (Blame::Backend, true), "{e}");

    let mut oversized = scripted_leg(b"", false, Duration::from_secs(5)).await;
    let e = oversized.read_exact(super::MAX_LINE + 1).await.unwrap_err();
    assert_eq!((e.blame(), e.timed_out()), (Blame::Backend, false), "{e}");
}
