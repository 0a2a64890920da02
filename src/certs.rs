//! Development certificates: a CA and a serving certificate for a Service's DNS names,
//! ECDSA P-256, made with rcgen. Production certificates come from cert-manager.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM text of a CA and a serving certificate signed by it.
#[derive(Debug, Clone)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertBundle {
    /// The `caBundle` of a webhook configuration: the CA certificate, PEM, base64-encoded.
    pub fn ca_bundle(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes())
    }
}

/// The names the API server may use to reach a Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

const VALIDITY_DAYS: i64 = 365;

/// A new CA and a serving certificate for `dns_names` (and `ip_addresses`).
pub fn generate(
    dns_names: &[String],
    ip_addresses: &[std::net::IpAddr],
) -> Result<CertBundle, CertError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mlguard development CA");
        dn.push(DnType::OrganizationName, "mlguard");
        dn
    };
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names.first().map_or("mlguard", String::as_str),
        );
        dn
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let io = |source: std::io::Error| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir`, as a kubernetes.io/tls Secret holds them.
pub fn write(dir: &Path, bundle: &CertBundle) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("ca.crt"), &bundle.ca_pem, false)?;
    write_file(&dir.join("tls.crt"), &bundle.cert_pem, false)?;
    write_file(&dir.join("tls.key"), &bundle.key_pem, true)
}

/// Names a development certificate must cover: the in-cluster Service names and loopback,
/// so that both a local API server (kind, minikube with a tunnel) and curl can reach it.
pub fn dev_names() -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut names = service_dns_names("mlguard", "mlguard-system");
    names.push("localhost".into());
    let ips = vec![
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    (names, ips)
}

/// Reuses the development certificates in `dir` if they are there, load, match, cover the
/// development names and stay valid for at least a day; otherwise writes new ones.
/// Returns the bundle and whether it was newly created.
pub fn ensure_dev(dir: &Path) -> Result<(CertBundle, bool), CertError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let (Some(ca_pem), Some(cert_pem), Some(key_pem)) =
        (read("ca.crt"), read("tls.crt"), read("tls.key"))
    {
        let reusable = crate::tls::inspect_pem(&cert_pem, &key_pem)
            .map(|info| {
                let (names, _) = dev_names();
                info.seconds_left() > 86_400 && names.iter().all(|n| info.dns_names.contains(n))
            })
            .unwrap_or(false);
        if reusable {
            return Ok((
                CertBundle {
                    ca_pem,
                    cert_pem,
                    key_pem,
                },
                false,
            ));
        }
    }
    let (names, ips) = dev_names();
    let bundle = generate(&names, &ips)?;
    write(dir, &bundle)?;
    Ok((bundle, true))
}

/// `mlguard certs`: writes a CA and a serving certificate for a Service, and says what to do
/// with them.
pub fn run(args: &crate::cli::CertsArgs) -> anyhow::Result<()> {
    let names = service_dns_names(&args.service, &args.namespace);
    let bundle = generate(&names, &[])?;
    write(&args.out, &bundle)?;
    println!(
        "wrote {dir}/ca.crt, {dir}/tls.crt and {dir}/tls.key for {names}\n\
         Create the Secret: kubectl -n {ns} create secret tls {svc}-tls --cert={dir}/tls.crt --key={dir}/tls.key\n\
         caBundle for the webhook configurations:\n{bundle}",
        dir = args.out.display(),
        names = names.join(", "),
        ns = args.namespace,
        svc = args.service,
        bundle = bundle.ca_bundle(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_cert_covers_service_names_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = ensure_dev(dir.path()).unwrap();
        assert!(created);
        let info = crate::tls::inspect_pem(&first.cert_pem, &first.key_pem).unwrap();
        for n in service_dns_names("mlguard", "mlguard-system") {
            assert!(
                info.dns_names.contains(&n),
                "{n} missing from {:?}",
                info.dns_names
            );
        }
        assert!(info.seconds_left() > 300 * 86_400);
        let (second, created) = ensure_dev(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.cert_pem, second.cert_pem);
        // A damaged key makes it start over rather than fail.
        std::fs::write(dir.path().join("tls.key"), "garbage").unwrap();
        let (_, created) = ensure_dev(dir.path()).unwrap();
        assert!(created);
    }
}
