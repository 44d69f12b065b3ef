//! The client leg: loads every `[tls.certificate.<id>]`, picks one per connection from the
//! client's SNI, and accepts TLS with it.
//!
//! Loading is shared by config validation (`--check` and start-up report every problem
//! with its key path) and by [`TlsAcceptor::from_config`], so both judge a file alike.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::pki_types::DnsName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{provider, read_chain, read_key, PROTOCOL_VERSIONS};
use crate::config::{key_path, CertificateConfig, ConfigError, Problems, TlsConfig};

/// Problems as (key path, message): validation feeds them to `Problems`, start-up to a
/// `ConfigError`.
type Found = Vec<(String, String)>;

/// One certificate, loaded and checked, with the names it answers for.
struct Loaded {
    at: String,
    names: Vec<String>,
    names_explicit: bool,
    default: bool,
    key: Arc<CertifiedKey>,
}

/// Validation hook: loads every certificate and reports what is wrong.
pub(crate) fn check_certificates(tls: &TlsConfig, p: &mut Problems) {
    let mut found = Found::new();
    load_all(tls, &mut found);
    for (at, message) in found {
        p.push(at, message);
    }
}

fn load_all(tls: &TlsConfig, found: &mut Found) -> Vec<Loaded> {
    let at = |id: &str| key_path("tls.certificate", id);
    let defaults: Vec<&String> = tls.certificate.iter().filter(|(_, c)| c.default).map(|(id, _)| id).collect();
    for extra in defaults.iter().skip(1) {
        found.push((
            key_path(&at(extra), "default"),
            format!("only one certificate may be the default; {} already is", at(defaults[0])),
        ));
    }
    if defaults.is_empty() && tls.certificate.len() > 1 {
        found.push((
            "tls.certificate".into(),
            "with several certificates one needs default = true: it serves clients that \
             send no server name or one no certificate lists"
                .into(),
        ));
    }
    let loaded: Vec<Loaded> =
        tls.certificate.iter().filter_map(|(id, c)| load_one(&at(id), c, tls.certificate.len() == 1, found)).collect();
    check_duplicates(&loaded, found);
    loaded
}

/// `only` marks the sole certificate, which serves unknown names even without `default`.
fn load_one(at: &str, c: &CertificateConfig, only: bool, found: &mut Found) -> Option<Loaded> {
    let cert_at = key_path(at, "cert");
    let key_at = key_path(at, "key");
    let chain = read_chain(&c.cert).map_err(|m| found.push((cert_at.clone(), m)));
    let key = read_key(&c.key).map_err(|m| found.push((key_at.clone(), m)));
    let (Ok(chain), Ok(key)) = (chain, key) else {
        return None;
    };
    let sans = match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(leaf) => leaf.valid_dns_names().map(normalize).collect::<Vec<_>>(),
        Err(e) => {
            let message = format!("{}: not a usable X.509 certificate: {e:?}", c.cert.display());
            found.push((cert_at, message));
            return None;
        }
    };
    let key = match CertifiedKey::from_der(chain, key, &provider()) {
        Ok(key) => Arc::new(key),
        Err(rustls::Error::InconsistentKeys(_)) => {
            let message = format!("{} does not match the certificate in {}", c.key.display(), c.cert.display());
            found.push((key_at, message));
            return None;
        }
        Err(e) => {
            found.push((key_at, format!("{}: unusable private key: {e}", c.key.display())));
            return None;
        }
    };
    let names_explicit = c.names.is_some();
    let names = match &c.names {
        Some(names) => checked_names(&key_path(at, "names"), names, found),
        None => sans,
    };
    if names.is_empty() && !(c.default || only) {
        let (where_, what) = match names_explicit {
            true => ("names", "must list at least one name unless default = true"),
            false => ("cert", "the certificate has no DNS names; list them in names"),
        };
        found.push((key_path(at, where_), what.into()));
    }
    Some(Loaded { at: at.to_owned(), names, names_explicit, default: c.default || only, key })
}

/// SNI is case-insensitive and may carry the root's trailing dot.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn checked_names(at: &str, names: &[String], found: &mut Found) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let name = normalize(name);
        let base = name.strip_prefix("*.").unwrap_or(&name);
        if base.contains('*') || DnsName::try_from(base).is_err() {
            found.push((
                format!("{at}[{i}]"),
                format!("{name:?} is not a DNS name (a wildcard only as a leading \"*.\")"),
            ));
        } else {
            out.push(name);
        }
    }
    out
}

/// A name served by two certificates would make the choice depend on table order.
fn check_duplicates(loaded: &[Loaded], found: &mut Found) {
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for cert in loaded {
        for name in &cert.names {
            match owners.get(name.as_str()) {
                Some(owner) if *owner != cert.at => {
                    let at = key_path(&cert.at, if cert.names_explicit { "names" } else { "cert" });
                    let message = format!("{name} is also served by {owner}; list names to choose one");
                    found.push((at, message));
                }
                _ => {
                    owners.insert(name, &cert.at);
                }
            }
        }
    }
}

/// Picks the certificate for a client's SNI (see [`SniResolver::select`]).
#[derive(Debug)]
pub(crate) struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(loaded: &[Loaded]) -> Self {
        let mut by_name = HashMap::new();
        for cert in loaded {
            for name in &cert.names {
                by_name.entry(name.clone()).or_insert_with(|| Arc::clone(&cert.key));
            }
        }
        let fallback = loaded.iter().find(|c| c.default).map(|c| Arc::clone(&c.key));
        SniResolver { by_name, fallback }
    }

    /// Exact name, then `*.parent`, then a certificate listing the parent domain itself
    /// (`mail.example.com` → `*.example.com` → `example.com`), then the default. One level
    /// only: a wildcard covers one label, and walking further up would pick certificates
    /// the client is certain to reject.
    pub(crate) fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.map(normalize).and_then(|name| {
            let parent = name.split_once('.').map(|(_, parent)| parent);
            self.by_name
                .get(&name)
                .or_else(|| parent.and_then(|p| self.by_name.get(&format!("*.{p}"))))
                .or_else(|| parent.and_then(|p| self.by_name.get(p)))
        });
        found.or(self.fallback.as_ref()).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

/// Accepts client-leg TLS with the node's certificates; cheap to clone (one shared
/// `ServerConfig`, so session resumption state is shared by all listeners).
#[derive(Clone)]
pub(crate) struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// Loads every `[tls.certificate.<id>]`; `None` when the node has none. Problems are
    /// reported like config validation's (validation has already run them at start-up).
    pub(crate) fn from_config(tls: &TlsConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
        if tls.certificate.is_empty() {
            return Ok(None);
        }
        let mut found = Found::new();
        let loaded = load_all(tls, &mut found);
        if !found.is_empty() {
            let problems = found.into_iter().map(|(at, m)| format!("{at}: {m}")).collect();
            return Err(ConfigError::Invalid { problems });
        }
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| ConfigError::Invalid { problems: vec![format!("tls: {e}")] })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver::new(&loaded)));
        Ok(Some(TlsAcceptor { config: Arc::new(config) }))
    }

    /// Runs the server handshake on `stream` (fresh for implicit TLS, or the plain
    /// connection after the protocol's STARTTLS reply). The caller bounds it with its own
    /// pre-auth deadline.
    pub(crate) async fn accept<S>(&self, stream: S) -> io::Result<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config)).accept(stream).await
    }
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}
