//! PEM files to a rustls server configuration, with certificates swapped in place on rotation:
//! the resolver hands each new TLS handshake the current key pair, so connections already open
//! keep theirs and nothing restarts. A bad or mismatched pair never replaces a good one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("the private key does not belong to the certificate ({0}); check that tls.crt and tls.key come from the same Secret")]
    Mismatch(String),
}

/// What mlguard reports about the certificate it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub dns_names: Vec<String>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    pub fn seconds_left(&self) -> i64 {
        self.not_after - now()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn parse_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            "no CERTIFICATE block in the PEM".into(),
        ));
    }
    Ok(chain)
}

fn cert_info(leaf: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::Certificate(format!("not X.509: {e}")))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                dns_names.push(n.to_string());
            }
        }
    }
    Ok(CertInfo {
        dns_names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Parses a certificate chain and key, checks they belong together, and returns the key pair
/// rustls serves with and what to report about it.
pub fn certified_key_from_pem(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let chain = parse_chain(cert_pem)?;
    let info = cert_info(&chain[0])?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok((certified, info))
}

/// Certificate facts, for deciding whether development certificates can be reused.
pub fn inspect_pem(cert_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
    certified_key_from_pem(cert_pem, key_pem).map(|(_, info)| info)
}

/// Reads both files; they are read together so a half-rotated pair is caught by the match check.
pub fn read_pair(cert: &Path, key: &Path) -> Result<(String, String), TlsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

pub fn load_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let (c, k) = read_pair(cert, key)?;
    certified_key_from_pem(&c, &k).map_err(|e| match e {
        TlsError::Certificate(m) => TlsError::Certificate(format!("{}: {m}", cert.display())),
        TlsError::Key(m) => TlsError::Key(format!("{}: {m}", key.display())),
        other => other,
    })
}

/// Serves whatever key pair was stored last.
#[derive(Debug)]
pub struct SwappableCert {
    current: ArcSwap<CertifiedKey>,
    not_after: AtomicI64,
}

impl SwappableCert {
    pub fn new(key: CertifiedKey, info: &CertInfo) -> Arc<Self> {
        Arc::new(SwappableCert {
            current: ArcSwap::from_pointee(key),
            not_after: AtomicI64::new(info.not_after),
        })
    }

    pub fn store(&self, key: CertifiedKey, info: &CertInfo) {
        self.current.store(Arc::new(key));
        self.not_after.store(info.not_after, Ordering::Relaxed);
    }

    /// Expiry of the certificate being served, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3 only, HTTP/1.1 (the API server's webhook client speaks HTTP/1.1 and keeps
/// connections alive).
pub fn server_config(cert: Arc<SwappableCert>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_pair_is_refused_with_advice() {
        let a = crate::certs::generate(&["a".into()], &[]).unwrap();
        let b = crate::certs::generate(&["b".into()], &[]).unwrap();
        let err = certified_key_from_pem(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("same Secret"));
        certified_key_from_pem(&a.cert_pem, &a.key_pem).unwrap();
    }

    #[test]
    fn garbage_is_named() {
        let a = crate::certs::generate(&["a".into()], &[]).unwrap();
        assert!(matches!(
            certified_key_from_pem("nope", &a.key_pem),
            Err(TlsError::Certificate(_))
        ));
        assert!(matches!(
            certified_key_from_pem(&a.cert_pem, "nope"),
            Err(TlsError::Key(_))
        ));
    }
}
