//! Tests for the `[api]`/`[grpc]` TLS and lockout keys: defaults, TLS required off
//! loopback, files really read at validation, every problem reported with its key.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::Config;

const DESTINATIONS: &str = "[routing]\ndefault_destination = \"legacy\"\n\
    [destination.legacy]\nhost = \"10.0.1.10\"\n[destination.legacy.protocol.imap]\nport = 143\n";

/// A CA and two leaves signed by it, as PEM files in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for stem in ["server", "other"] {
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec!["cp.example.test".to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            std::fs::write(dir.path().join(format!("{stem}.pem")), leaf.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `name` as a TOML string.
    fn toml(&self, name: &str) -> String {
        format!("{:?}", self.path(name).display().to_string())
    }

    /// `tls_cert` and `tls_key` lines for the server pair.
    fn pair(&self) -> String {
        format!("tls_cert = {}\ntls_key = {}\n", self.toml("server.pem"), self.toml("server.key"))
    }
}

fn parse(tables: &str) -> Result<Config, Vec<String>> {
    Config::from_toml_str(&format!("{tables}\n{DESTINATIONS}")).map_err(|e| e.problems().to_vec())
}

fn assert_one(tables: &str, expected: &str) {
    let found = parse(tables).expect_err(tables);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with(expected), "{found:?} lacks {expected:?}");
}

#[test]
fn defaults_are_loopback_without_tls_and_a_ten_failure_lockout() {
    let c = parse("").unwrap();
    assert_eq!((c.api.tls_cert, c.api.tls_key), (None, None));
    assert_eq!((c.grpc.tls_cert, c.grpc.tls_key, c.grpc.client_ca), (None, None, None));
    assert_eq!(c.api.lockout_threshold, 10);
    assert_eq!(c.api.lockout_window, Duration::from_secs(60));
    assert_eq!(c.api.lockout_duration, Duration::from_secs(300));
    let c = parse("[api]\nlockout_threshold = 3\nlockout_window = \"30s\"\nlockout_duration = \"1h\"").unwrap();
    assert_eq!(c.api.lockout_threshold, 3);
    assert_eq!((c.api.lockout_window, c.api.lockout_duration), (Duration::from_secs(30), Duration::from_secs(3600)));
}

#[test]
fn lockout_values_must_be_positive() {
    assert_one("[api]\nlockout_threshold = 0", "api.lockout_threshold: must be at least 1");
    assert_one("[api]\nlockout_window = \"0s\"", "api.lockout_window: must be greater than zero");
    assert_one("[api]\nlockout_duration = \"0s\"", "api.lockout_duration: must be greater than zero");
}

#[test]
fn tls_is_required_off_loopback() {
    const REQUIRED: &str = "TLS required when bound to a non-loopback address";
    assert_one("[api]\nbind = \"0.0.0.0:7480\"", &format!("api.bind: {REQUIRED} (0.0.0.0:7480)"));
    assert_one("[grpc]\nbind = \"10.0.0.5:7400\"", &format!("grpc.bind: {REQUIRED} (10.0.0.5:7400)"));
    assert_one("[grpc]\nbind = \"[::]:7400\"", &format!("grpc.bind: {REQUIRED}"));
    let both = parse("[api]\nbind = \"0.0.0.0:7480\"\n[grpc]\nbind = \"0.0.0.0:7400\"").unwrap_err();
    assert_eq!(both.len(), 2, "{both:?}");
    for loopback in ["127.0.0.2:7480", "[::1]:7480", "[::ffff:127.0.0.1]:7480"] {
        parse(&format!("[api]\nbind = \"{loopback}\"")).unwrap();
    }
    let files = Files::new();
    let c = parse(&format!(
        "[api]\nbind = \"0.0.0.0:7480\"\n{pair}[grpc]\nbind = \"0.0.0.0:7400\"\n{pair}client_ca = {ca}",
        pair = files.pair(),
        ca = files.toml("ca.pem")
    ))
    .unwrap();
    assert_eq!(c.grpc.client_ca.as_deref(), Some(files.path("ca.pem").as_path()));
    assert_eq!(c.api.tls_cert.as_deref(), Some(files.path("server.pem").as_path()));
}

#[test]
fn each_tls_problem_names_its_key() {
    let f = Files::new();
    let (cert, key, ca) = (f.toml("server.pem"), f.toml("server.key"), f.toml("ca.pem"));
    assert_one(&format!("[api]\ntls_cert = {cert}"), "api.tls_key: required with tls_cert");
    assert_one(&format!("[grpc]\ntls_key = {key}"), "grpc.tls_cert: required with tls_key");
    assert_one(&format!("[grpc]\nclient_ca = {ca}"), "grpc.client_ca: client certificates need TLS");
    assert_one(&format!("[api]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = {key}"), "api.tls_cert: cannot read");
    assert_one(&format!("[api]\ntls_cert = {key}\ntls_key = {key}"), "api.tls_cert: no PEM CERTIFICATE");
    assert_one(&format!("[api]\ntls_cert = {cert}\ntls_key = {cert}"), "api.tls_key: no private key");
    let mismatched = format!("[grpc]\ntls_cert = {cert}\ntls_key = {}", f.toml("other.key"));
    assert_one(&mismatched, "grpc.tls_key: ");
    assert!(parse(&mismatched).unwrap_err()[0].contains("does not match the certificate"));
    assert_one(&format!("[grpc]\n{}client_ca = {key}", f.pair()), "grpc.client_ca: no PEM CERTIFICATE");
    assert_one(&format!("[grpc]\n{}client_ca = \"/nonexistent/ca.pem\"", f.pair()), "grpc.client_ca: cannot read");
}

#[test]
fn all_problems_come_at_once() {
    let found = parse(
        "[api]\nbind = \"0.0.0.0:7480\"\nlockout_threshold = 0\n\
         [grpc]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\nclient_ca = \"/nonexistent/ca.pem\"",
    )
    .unwrap_err();
    for expected in
        ["api.bind: TLS required", "api.lockout_threshold", "grpc.tls_cert", "grpc.tls_key", "grpc.client_ca"]
    {
        assert!(found.iter().any(|f| f.starts_with(expected)), "{expected:?} missing from {found:?}");
    }
}
