//! TLS: certificates chosen by SNI from the sites, and the rustls server config.
//!
//! Sits right after accept on `tls_listen` listeners. A ClientHello for a name no
//! site has gets no certificate, so the handshake fails with an alert and no other
//! site's certificate is ever shown. A ClientHello without SNI (IP-based health
//! checks, old clients, scanners) gets the default site's certificate
//! (`[server] default_tls_site`, else the first site with TLS), and the connection
//! is then treated as if it had named that site (`conn.rs`), so a `Host` of
//! another site still gets 421.
//!
//! The server's cipher-suite order wins over the client's: rustls's order puts
//! AES-256-GCM before AES-128-GCM and ChaCha20, and only ECDHE suites.

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

/// Host name → certificate, exact match on the lowercased SNI name; one of them
/// for clients that send no SNI.
#[derive(Debug, Default)]
pub struct SniResolver {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// The certificate for a ClientHello without SNI.
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) {
        self.by_host.insert(host.to_ascii_lowercase(), key);
    }

    /// Makes the certificate of `host` the one for clients without SNI.
    /// Returns false (and changes nothing) if no certificate has that host.
    pub fn set_default(&mut self, host: &str) -> bool {
        match self.by_host.get(&host.to_ascii_lowercase()) {
            Some(key) => {
                self.default = Some(key.clone());
                true
            }
            None => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        match server_name {
            Some(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.by_host.get(&name).cloned()
            }
            None => self.default.clone(),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// A rustls server config that offers h2 and http/1.1 by ALPN and chooses the
/// cipher suite by its own order of preference.
pub fn server_config(resolver: SniResolver) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Clients that list ChaCha20 or AES-128 first (or weak-first scanners) still
    // get the strongest suite both sides have.
    cfg.ignore_client_order = true;
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let ck = certified_key(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        Arc::new(ck)
    }

    #[test]
    fn no_sni_gets_the_default_and_unknown_names_get_nothing() {
        let (a, b) = (key(), key());
        let mut r = SniResolver::default();
        r.insert("A.test", a.clone());
        r.insert("b.test", b.clone());
        assert!(r.lookup(None).is_none(), "no default set: no certificate");
        assert!(!r.set_default("c.test"), "a host without certificate");
        assert!(r.set_default("b.TEST"));
        assert!(Arc::ptr_eq(&r.lookup(None).unwrap(), &b));
        assert!(Arc::ptr_eq(&r.lookup(Some("a.test.")).unwrap(), &a));
        assert!(
            r.lookup(Some("c.test")).is_none(),
            "never the default for a name"
        );
    }
}
