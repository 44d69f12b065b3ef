//! `[control]` TLS keys: whom a node trusts on `https://` control-plane endpoints and the
//! client certificate it presents there. The files are read at validation, like the
//! client-leg certificates, so `--check` and start-up name an unreadable or mismatched one.

use std::path::Path;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::{ControlConfig, Problems};
use crate::tls::{provider, read_chain, read_key};

pub(super) fn check(control: &ControlConfig, p: &mut Problems) {
    let keys = [
        ("control.tls_ca", &control.tls_ca),
        ("control.tls_client_cert", &control.tls_client_cert),
        ("control.tls_client_key", &control.tls_client_key),
    ];
    // A TLS key next to plain endpoints means the operator believes the link is protected.
    if !control.endpoints.iter().any(|e| e.starts_with("https://")) {
        for (at, _) in keys.iter().filter(|(_, path)| path.is_some()) {
            p.push(*at, "only used with https:// endpoints, and none is");
        }
    }
    if let Some(ca) = &control.tls_ca {
        if let Err(message) = check_ca(ca) {
            p.push("control.tls_ca", message);
        }
    }
    match (&control.tls_client_cert, &control.tls_client_key) {
        (Some(cert), Some(key)) => check_identity(cert, key, p),
        (Some(_), None) => p.push("control.tls_client_key", "required with tls_client_cert"),
        (None, Some(_)) => p.push("control.tls_client_cert", "required with tls_client_key"),
        (None, None) => {}
    }
}

fn check_ca(path: &Path) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_chain(path)?);
    match added {
        0 => Err(format!("no usable CA certificate in {}", path.display())),
        _ => Ok(()),
    }
}

fn check_identity(cert: &Path, key: &Path, p: &mut Problems) {
    let chain = read_chain(cert).map_err(|m| p.push("control.tls_client_cert", m));
    let private = read_key(key).map_err(|m| p.push("control.tls_client_key", m));
    let (Ok(chain), Ok(private)) = (chain, private) else {
        return;
    };
    match CertifiedKey::from_der(chain, private, &provider()) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => p.push(
            "control.tls_client_key",
            format!("{} does not match the certificate in {}", key.display(), cert.display()),
        ),
        Err(e) => p.push("control.tls_client_key", format!("{}: unusable private key: {e}", key.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use crate::tls::testing::Pki;

    fn text(endpoint: &str, control: &str) -> String {
        format!(
            "[control]\nendpoints = [\"{endpoint}\"]\n{control}\n\
             [listener.imap]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:0\"]\ntls = \"plain\"\n"
        )
    }

    fn path(p: &std::path::Path) -> String {
        format!("{:?}", p.display().to_string())
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    #[test]
    fn tls_keys_default_to_unset_and_load_when_valid() {
        let config = Config::from_toml_str(&text("http://127.0.0.1:7400", "")).unwrap();
        assert_eq!(
            (config.control.tls_ca, config.control.tls_client_cert, config.control.tls_client_key),
            (None, None, None)
        );

        let pki = Pki::new();
        let node = pki.issue("node", &["dp-1"]);
        let ca = pki.dir.path().join("ca.pem");
        std::fs::write(&ca, std::fs::read(&node.cert_path).unwrap()).unwrap();
        let control = format!(
            "tls_ca = {}\ntls_client_cert = {}\ntls_client_key = {}",
            path(&ca),
            path(&node.cert_path),
            path(&node.key_path)
        );
        let config = Config::from_toml_str(&text("https://cp.example.test:7400", &control)).unwrap();
        assert_eq!(config.control.tls_ca.as_deref(), Some(ca.as_path()));
        assert_eq!(config.control.tls_client_key.as_deref(), Some(node.key_path.as_path()));
    }

    #[test]
    fn each_problem_is_reported_with_its_key() {
        let pki = Pki::new();
        let (a, b) = (pki.issue("a", &["a.test"]), pki.issue("b", &["b.test"]));
        let https = "https://cp:7400";
        let cases = [
            (
                text(https, &format!("tls_client_cert = {}", path(&a.cert_path))),
                "control.tls_client_key: required with tls_client_cert",
            ),
            (
                text(https, &format!("tls_client_key = {}", path(&a.key_path))),
                "control.tls_client_cert: required with tls_client_key",
            ),
            (text(https, "tls_ca = \"/nonexistent/ca.pem\""), "control.tls_ca: cannot read /nonexistent/ca.pem"),
            (text(https, &format!("tls_ca = {}", path(&a.key_path))), "control.tls_ca: no PEM CERTIFICATE in"),
            (
                text(
                    https,
                    &format!("tls_client_cert = {}\ntls_client_key = {}", path(&a.cert_path), path(&b.key_path)),
                ),
                "control.tls_client_key: ",
            ),
            (
                text("http://127.0.0.1:7400", &format!("tls_ca = {}", path(&a.cert_path))),
                "control.tls_ca: only used with https:// endpoints, and none is",
            ),
        ];
        for (text, expected) in cases {
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].starts_with(expected), "{found:?} lacks {expected:?}");
        }
        let mismatched =
            text(https, &format!("tls_client_cert = {}\ntls_client_key = {}", path(&a.cert_path), path(&b.key_path)));
        assert!(problems(&mismatched)[0].contains("does not match the certificate"));
    }

    #[test]
    fn all_problems_come_at_once() {
        let control = "tls_ca = \"/nonexistent/ca.pem\"\ntls_client_cert = \"/nonexistent/c.pem\"";
        let found = problems(&text("http://127.0.0.1:7400", control));
        for expected in [
            "control.tls_ca: only used with https://",
            "control.tls_client_cert: only used with https://",
            "control.tls_ca: cannot read",
            "control.tls_client_key: required with tls_client_cert",
        ] {
            assert!(found.iter().any(|f| f.starts_with(expected)), "{expected:?} missing from {found:?}");
        }
    }
}
