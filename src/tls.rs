//! rustls configurations: the downstream server (PEM certificate chain and
//! key, ALPN `h2` + `http/1.1`) and the upstream clients (system roots or an
//! operator-supplied CA file, SNI from the upstream host, ALPN per the
//! configured protocol). One crypto provider, *ring*, everywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS set-up problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}: {message}")]
    Pem {
        /// Certificate, key or CA bundle.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the material (for example a key that does not match
    /// the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// No trust anchors could be loaded.
    #[error("no trusted CA certificates: {0}")]
    NoRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM chain.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem_error = |message: String| Error::Pem {
        what: "certificates",
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| Error::Pem {
        what: "private key",
        path: path.to_owned(),
        message: err.to_string(),
    })
}

/// PEM files for TLS termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Certificate chain.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
}

/// The downstream server configuration: HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An upstream client configuration. `ca_file` replaces the system roots
/// (internal servers usually have an internal CA). The ALPN offer is left
/// empty: the connector sets it from the configured protocol.
/// A client configuration that encrypts but does not check who the server
/// is (the handshake's signatures are still verified): PostgreSQL's
/// `sslmode=prefer` and `require` without a CA, as libpq does them. Only
/// the store uses it, and only where the operator's URL asks for no more.
pub(crate) fn unverified_client_config() -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(Unverified(Arc::clone(&provider)));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts any certificate chain; checks the handshake's signatures with
/// the provider's algorithms.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                // A single unparsable system certificate must not make every
                // upstream unreachable; the rest still apply.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
                return Err(Error::NoRoots(format!(
                    "the system store is empty ({}); set ca_file",
                    errors.join("; ")
                )));
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every new connection to a server seen before resumes its TLS session
    // (TLS 1.3 tickets, TLS 1.2 ids or tickets): a full handshake costs two
    // round trips and an asymmetric signature, which adds up when the sync
    // opens connections to a distant target as its concurrency grows. The
    // store is shared by every connection of one upstream's pool.
    config.resumption = rustls::client::Resumption::in_memory_sessions(SESSION_CACHE)
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOrTickets);
    Ok(config)
}

/// TLS sessions remembered per upstream client (rustls keeps a few tickets
/// per server name within it).
const SESSION_CACHE: usize = 256;
