//! TLS 1.3 (rustls, ring provider) with optional mutual TLS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{LoadedConfig, TlsConfig};

/// Why the TLS configuration could not be built; names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file is unreadable or holds no usable PEM.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the certificates, the key or the client CA.
    #[error("tls configuration: {0}")]
    Config(String),
}

fn file_err(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The client certificate presented on a connection (DER), if any.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Vec<u8>);

/// Installs the ring crypto provider as the process default. Both ring and
/// aws-lc-rs are compiled in (tiberius brings the latter); without this
/// rustls panics at the first `ServerConfig::builder()`.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the server's rustls configuration: TLS 1.3 only; client
/// certificates verified against `client_ca` when given, required when
/// `require_client_cert`.
pub fn server_config(loaded: &LoadedConfig, t: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    install_provider();
    let cert_path = loaded.resolve(&t.cert);
    let key_path = loaded.resolve(&t.key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    if certs.is_empty() {
        return Err(file_err(&cert_path, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let builder = match &t.client_ca {
        Some(ca) => {
            let ca_path = loaded.resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca_path).map_err(|e| file_err(&ca_path, e))? {
                let c = c.map_err(|e| file_err(&ca_path, e))?;
                roots.add(c).map_err(|e| file_err(&ca_path, e))?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if t.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| file_err(&ca_path, e))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("{} with {}: {e}", cert_path.display(), key_path.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
