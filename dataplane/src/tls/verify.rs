//! Backend certificate checks that replace the web PKI: a pinned leaf fingerprint, or an
//! operator's explicit "insecure". Both still verify the handshake signatures, so the
//! peer must hold the private key of the certificate it presented.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::fingerprint;

/// What the end-entity certificate is trusted by.
#[derive(Debug, Clone)]
pub(crate) enum Trust {
    /// The SHA-256 of the leaf's DER must be one of these (several allow a rotation).
    Pinned(Vec<[u8; 32]>),
    /// Any certificate; the name, issuer and dates are not checked either.
    Any,
}

#[derive(Debug)]
pub(crate) struct LeafVerifier {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
}

impl LeafVerifier {
    pub(crate) fn new(trust: Trust) -> Arc<Self> {
        Arc::new(LeafVerifier { trust, algorithms: super::provider().signature_verification_algorithms })
    }
}

/// Why a pinned backend was refused; the fingerprint tells the operator what to pin if
/// the certificate was rotated on purpose.
#[derive(Debug, thiserror::Error)]
#[error("certificate SHA-256 {0} matches no tls_pin_sha256")]
struct PinMismatch(String);

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(pins) => {
                let seen = fingerprint(end_entity);
                let matches = pins.iter().any(|pin| hex::encode(pin) == seen);
                if matches {
                    Ok(ServerCertVerified::assertion())
                } else {
                    let why = OtherError(Arc::new(PinMismatch(seen)));
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(why)))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
