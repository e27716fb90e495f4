//! TLS: certificates chosen by SNI from the sites, and the rustls server config.
//!
//! Sits right after accept on `tls_listen` listeners. A ClientHello for a name no
//! site has (or without SNI) gets no certificate, so the handshake fails with an
//! alert and no other site's certificate is ever shown.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Parses a PEM certificate chain and private key and checks that they belong
/// together. The error says what is wrong, for `file:line: key: why` messages.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("certificate file holds no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("key file holds no usable private key: {e}"))?;
    let provider = ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key not supported: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(ck)
}

/// Host name → certificate, exact match on the lowercased SNI name.
#[derive(Debug, Default)]
pub struct SniResolver {
    by_host: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) {
        self.by_host.insert(host.to_ascii_lowercase(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.by_host.get(&name).cloned()
    }
}

/// A rustls server config that offers h2 and http/1.1 by ALPN.
pub fn server_config(resolver: SniResolver) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
