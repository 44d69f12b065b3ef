//! Real handshakes with generated certificates: SNI selection on the client leg, every
//! verification mode and the client certificate on the backend leg, `MaybeTls` both ways.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::testing::{Issued, Pki};
use super::verify::{LeafVerifier, Trust};
use super::*;
use crate::config::TlsConfig;
use crate::settings::{BackendTls, ClientCert, Destination, TlsVerify};

struct Sni {
    _pki: Pki,
    mail: Issued,
    other: Issued,
    parent: Issued,
    fallback: Issued,
    acceptor: TlsAcceptor,
}

fn sni_setup() -> Sni {
    let pki = Pki::new();
    let mail = pki.issue("mail", &["mail.example.test"]);
    let other = pki.issue("other", &["*.other.test"]);
    let parent = pki.issue("parent", &["parent.test"]);
    let fallback = pki.issue("fallback", &["fallback.test"]);
    let mut tls = TlsConfig::default();
    tls.certificate.insert("mail".into(), mail.config(false, None));
    tls.certificate.insert("other".into(), other.config(false, None));
    tls.certificate.insert("parent".into(), parent.config(false, Some(&["Parent.Test."])));
    tls.certificate.insert("fallback".into(), fallback.config(true, None));
    let acceptor = TlsAcceptor::from_config(&tls).unwrap().expect("certificates are configured");
    Sni { _pki: pki, mail, other, parent, fallback, acceptor }
}

fn client_config(trust: Trust) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(LeafVerifier::new(trust))
        .with_no_client_auth()
}

/// Handshakes as a client sending `sni` (nothing for `None`); returns the leaf the server
/// presented and the server name the server saw.
async fn presented(acceptor: &TlsAcceptor, sni: Option<&str>) -> (CertificateDer<'static>, Option<String>) {
    let mut config = client_config(Trust::Any);
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (client, server) = tokio::join!(connector.connect(name, client_io), acceptor.accept(server_io));
    let (client, server) = (client.unwrap(), server.unwrap());
    let leaf = client.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    (leaf, server.get_ref().1.server_name().map(str::to_owned))
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_parent_then_default() {
    let s = sni_setup();
    let cases: [(Option<&str>, &Issued); 8] = [
        (Some("mail.example.test"), &s.mail),
        (Some("MAIL.Example.TEST"), &s.mail),
        (Some("imap.other.test"), &s.other),
        (Some("imap.parent.test"), &s.parent),
        (Some("parent.test"), &s.parent),
        // A wildcard covers one label; further up falls back to the default.
        (Some("a.b.other.test"), &s.fallback),
        (Some("unknown.example.test"), &s.fallback),
        (None, &s.fallback),
    ];
    for (sni, expected) in cases {
        let (leaf, seen) = presented(&s.acceptor, sni).await;
        assert!(leaf == expected.der, "SNI {sni:?} got the wrong certificate");
        assert_eq!(seen.is_some(), sni.is_some(), "{sni:?}");
    }
}

#[tokio::test]
async fn a_lone_certificate_serves_everyone_without_default() {
    let pki = Pki::new();
    let only = pki.issue("only", &["only.test"]);
    let mut tls = TlsConfig::default();
    tls.certificate.insert("only".into(), only.config(false, None));
    let acceptor = TlsAcceptor::from_config(&tls).unwrap().unwrap();
    assert!(presented(&acceptor, None).await.0 == only.der);
    assert!(presented(&acceptor, Some("else.test")).await.0 == only.der);
}

#[test]
fn acceptor_needs_certificates_that_load() {
    assert!(TlsAcceptor::from_config(&TlsConfig::default()).unwrap().is_none());
    let pki = Pki::new();
    let mut leaf = pki.issue("leaf", &["leaf.test"]).config(true, None);
    leaf.key = pki.dir.path().join("absent.key");
    let tls = TlsConfig { certificate: [("main".to_string(), leaf)].into() };
    let err = TlsAcceptor::from_config(&tls).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(err.problems()[0].starts_with("tls.certificate.main.key: cannot read "), "{err}");
}

fn dest(verify: TlsVerify, server_name: &str, client_cert: Option<&Issued>) -> Destination {
    Destination {
        id: "backend".into(),
        host: "127.0.0.1".into(),
        allow_plaintext_auth: false,
        endpoints: HashMap::new(),
        tls: BackendTls {
            verify,
            server_name: server_name.into(),
            client_cert: client_cert.map(|c| ClientCert { cert: c.cert_path.clone(), key: c.key_path.clone() }),
        },
    }
}

/// A one-connection TLS backend on loopback presenting `leaf`, demanding a client
/// certificate from `client_ca` when given. It answers `ping` with `pong` and resolves to
/// the client certificate it saw.
async fn backend(leaf: &Issued, client_ca: Option<&Pki>) -> (SocketAddr, JoinHandle<io::Result<Option<Vec<u8>>>>) {
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(PROTOCOL_VERSIONS).unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider()).build().unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec()))
    });
    (addr, task)
}

/// Connects to `addr` as `dest` and checks the backend answers through the tunnel.
async fn talk(connector: &Connector, dest: &Destination, addr: SocketAddr) -> io::Result<()> {
    let mut tls = connector.connect(dest, TcpStream::connect(addr).await?).await?;
    tls.write_all(b"ping").await?;
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await?;
    assert_eq!(&pong, b"pong");
    Ok(())
}

#[tokio::test]
async fn pinned_accepts_the_right_pin_and_rejects_others() {
    let pki = Pki::new();
    let leaf = pki.self_signed("backend", &["backend.test"]);
    let pin: [u8; 32] = hex::decode(fingerprint(&leaf.der)).unwrap().try_into().unwrap();
    let connector = Connector::new();
    let (addr, server) = backend(&leaf, None).await;
    let right = dest(TlsVerify::Pinned(vec![[7; 32], pin]), "backend.test", None);
    talk(&connector, &right, addr).await.unwrap();
    server.await.unwrap().unwrap();

    let (addr, server) = backend(&leaf, None).await;
    let wrong = dest(TlsVerify::Pinned(vec![[7; 32]]), "backend.test", None);
    let err = talk(&connector, &wrong, addr).await.unwrap_err();
    assert!(err.to_string().contains(&fingerprint(&leaf.der)), "the log names what was seen: {err}");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn system_rejects_a_self_signed_certificate_and_insecure_accepts_it() {
    let pki = Pki::new();
    let leaf = pki.self_signed("backend", &["backend.test"]);
    for connector in [Connector::new(), Connector::with_roots(pki.roots())] {
        let (addr, _server) = backend(&leaf, None).await;
        let err = talk(&connector, &dest(TlsVerify::System, "backend.test", None), addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
    let (addr, server) = backend(&leaf, None).await;
    talk(&Connector::new(), &dest(TlsVerify::Insecure, "whatever.test", None), addr).await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn system_trusts_its_roots_and_checks_the_name_dns_or_ip() {
    let pki = Pki::new();
    let leaf = pki.issue("backend", &["backend.test", "127.0.0.1"]);
    let connector = Connector::with_roots(pki.roots());
    for name in ["backend.test", "127.0.0.1"] {
        let (addr, server) = backend(&leaf, None).await;
        talk(&connector, &dest(TlsVerify::System, name, None), addr).await.unwrap();
        server.await.unwrap().unwrap();
    }
    for name in ["other.test", "127.0.0.2"] {
        let (addr, _server) = backend(&leaf, None).await;
        assert!(talk(&connector, &dest(TlsVerify::System, name, None), addr).await.is_err(), "{name}");
    }
    // An IP server name works with pinning too (no SNI is sent for it).
    let pin = hex::decode(fingerprint(&leaf.der)).unwrap().try_into().unwrap();
    let (addr, server) = backend(&leaf, None).await;
    talk(&connector, &dest(TlsVerify::Pinned(vec![pin]), "127.0.0.1", None), addr).await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_client_certificate_is_presented_when_configured() {
    let pki = Pki::new();
    let leaf = pki.issue("backend", &["backend.test"]);
    let client = pki.issue("node", &["dp-1.test"]);
    let connector = Connector::with_roots(pki.roots());
    let (addr, server) = backend(&leaf, Some(&pki)).await;
    let _ = talk(&connector, &dest(TlsVerify::System, "backend.test", None), addr).await;
    assert!(server.await.unwrap().is_err(), "a backend demanding a certificate refuses none");

    let (addr, server) = backend(&leaf, Some(&pki)).await;
    talk(&connector, &dest(TlsVerify::System, "backend.test", Some(&client)), addr).await.unwrap();
    assert_eq!(server.await.unwrap().unwrap(), Some(client.der.to_vec()));
}

#[test]
fn client_configs_are_cached_per_destination_settings() {
    let pki = Pki::new();
    let client = pki.issue("node", &["dp-1.test"]);
    let connector = Connector::with_roots(pki.roots());
    let system = dest(TlsVerify::System, "backend.test", Some(&client));
    let first = connector.client_config(&system).unwrap();
    assert!(Arc::ptr_eq(&first, &connector.client_config(&system).unwrap()));
    let insecure = dest(TlsVerify::Insecure, "backend.test", Some(&client));
    assert!(!Arc::ptr_eq(&first, &connector.client_config(&insecure).unwrap()));

    let mut missing = dest(TlsVerify::System, "backend.test", Some(&client));
    missing.tls.client_cert.as_mut().unwrap().key = pki.dir.path().join("absent.key");
    let err = connector.client_config(&missing).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().starts_with("destination backend: tls_client_key: cannot read"), "{err}");
}

#[tokio::test]
async fn maybe_tls_upgrades_both_legs() {
    let s = sni_setup();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = s.acceptor.clone();
    let node = tokio::spawn(async move {
        let client_leg = MaybeTls::from(listener.accept().await.unwrap().0);
        assert!(!client_leg.is_tls() && client_leg.sni().is_none());
        let mut client_leg = client_leg.accept(&acceptor).await.unwrap();
        assert!(client_leg.is_tls());
        assert_eq!(client_leg.sni(), Some("mail.example.test"));
        let mut line = [0u8; 5];
        client_leg.read_exact(&mut line).await.unwrap();
        client_leg.write_all(b"world").await.unwrap();
        client_leg.shutdown().await.unwrap();
        assert!(client_leg.accept(&acceptor).await.is_err(), "no second upgrade");
        line
    });
    let backend_leg = MaybeTls::from(TcpStream::connect(addr).await.unwrap());
    assert_eq!(backend_leg.peer_addr().unwrap(), addr);
    let pin = hex::decode(fingerprint(&s.mail.der)).unwrap().try_into().unwrap();
    let to = dest(TlsVerify::Pinned(vec![pin]), "mail.example.test", None);
    let mut backend_leg = backend_leg.connect(&Connector::new(), &to).await.unwrap();
    assert!(matches!(backend_leg, MaybeTls::Client(_)) && backend_leg.is_tls());
    backend_leg.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    backend_leg.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"world");
    assert_eq!(&node.await.unwrap(), b"hello");
}
