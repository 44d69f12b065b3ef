//! The backend leg: the rustls client config a destination's TLS settings call for,
//! built once per destination and reused, and the client handshake.
//!
//! "System" trust is the operating system's store (rustls-native-certs, which honours
//! `SSL_CERT_FILE`/`SSL_CERT_DIR`), not a compiled-in Mozilla bundle: backends are often
//! behind an internal CA that operators add to the host's store, and the container image
//! ships `ca-certificates`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};

use super::verify::{LeafVerifier, Trust};
use super::{provider, read_chain, read_key, server_name, PROTOCOL_VERSIONS};
use crate::settings::{BackendTls, ClientCert, Destination, TlsVerify};

/// Modification times of a client certificate and key: a renewed file on disk is picked
/// up at the next connect without waiting for a settings change.
type FileStamp = (Option<SystemTime>, Option<SystemTime>);

struct Cached {
    tls: BackendTls,
    files: Option<FileStamp>,
    config: Arc<ClientConfig>,
}

/// Builds and caches one `ClientConfig` per destination (keyed by its id and rebuilt when
/// its TLS settings or client-certificate files change), so resumption state is reused.
pub(crate) struct Connector {
    roots: OnceLock<Arc<RootCertStore>>,
    configs: Mutex<HashMap<String, Cached>>,
}

impl Connector {
    /// Trusts the operating system's store for `tls_verify = "system"`, read on first use.
    pub(crate) fn new() -> Self {
        Connector { roots: OnceLock::new(), configs: Mutex::new(HashMap::new()) }
    }

    /// Trusts exactly `roots` for `tls_verify = "system"` (tests).
    #[cfg(test)]
    pub(crate) fn with_roots(roots: RootCertStore) -> Self {
        let connector = Connector::new();
        let _ = connector.roots.set(Arc::new(roots));
        connector
    }

    /// The process-wide connector behind [`connect_tls`].
    pub(crate) fn global() -> &'static Connector {
        static GLOBAL: OnceLock<Connector> = OnceLock::new();
        GLOBAL.get_or_init(Connector::new)
    }

    /// Runs the client handshake on `stream` (fresh for implicit TLS, or the plain
    /// connection after the backend accepted STARTTLS). Local problems (unreadable client
    /// certificate, bad server name) come back as `InvalidInput`: they are not the
    /// backend's fault. A refused certificate is `InvalidData` from the handshake.
    pub(crate) async fn connect<S>(
        &self,
        dest: &Destination,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.client_config(dest)?;
        let name = server_name(&dest.tls.server_name)
            .ok_or_else(|| local(dest, format!("invalid TLS server name {:?}", dest.tls.server_name)))?;
        tokio_rustls::TlsConnector::from(config).connect(name, stream).await
    }

    /// The cached config for `dest`, built on first use or after a change.
    pub(crate) fn client_config(&self, dest: &Destination) -> io::Result<Arc<ClientConfig>> {
        let files = dest.tls.client_cert.as_ref().map(stamp);
        // Building under the lock keeps it to one build (and one insecure warning) per
        // destination; it only reads small local files, never awaits.
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = configs.get(&dest.id) {
            if cached.tls == dest.tls && cached.files == files {
                return Ok(Arc::clone(&cached.config));
            }
        }
        let config = Arc::new(self.build(dest)?);
        configs.insert(dest.id.clone(), Cached { tls: dest.tls.clone(), files, config: Arc::clone(&config) });
        Ok(config)
    }

    fn build(&self, dest: &Destination) -> io::Result<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| local(dest, e))?;
        let builder = match &dest.tls.verify {
            TlsVerify::System => builder.with_root_certificates(self.system_roots()),
            TlsVerify::Pinned(pins) => {
                builder.dangerous().with_custom_certificate_verifier(LeafVerifier::new(Trust::Pinned(pins.clone())))
            }
            TlsVerify::Insecure => {
                tracing::warn!(
                    destination = %dest.id,
                    "backend certificate is not verified (tls_verify = \"insecure\")"
                );
                builder.dangerous().with_custom_certificate_verifier(LeafVerifier::new(Trust::Any))
            }
        };
        match &dest.tls.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some(ClientCert { cert, key }) => {
                let chain = read_chain(cert).map_err(|m| local(dest, format!("tls_client_cert: {m}")))?;
                let key = read_key(key).map_err(|m| local(dest, format!("tls_client_key: {m}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| local(dest, format!("tls_client_key: {e}")))
            }
        }
    }

    fn system_roots(&self) -> Arc<RootCertStore> {
        let roots = self.roots.get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::error!("the system trust store has no usable certificates; backends with tls_verify = \"system\" will be refused");
            } else {
                tracing::debug!(added, ignored, "system trust store loaded");
            }
            Arc::new(roots)
        });
        Arc::clone(roots)
    }
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new()
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

fn stamp(c: &ClientCert) -> FileStamp {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&c.cert), modified(&c.key))
}

fn local(dest: &Destination, message: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("destination {}: {message}", dest.id))
}
