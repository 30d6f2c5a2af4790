//! TLS 1.3 (rustls, ring provider) with optional mutual TLS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{LoadedConfig, TlsConfig};

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
pub fn server_config(loaded: &LoadedConfig, t: &TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    install_provider();
    let cert_path = loaded.resolve(&t.cert);
    let key_path = loaded.resolve(&t.key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in the file", cert_path.display());
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let builder = match &t.client_ca {
        Some(ca) => {
            let ca_path = loaded.resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(&ca_path).map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?
            {
                let c = c.map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca_path.display()))?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if t.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build()?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
