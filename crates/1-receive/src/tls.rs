//! The STARTTLS certificate: from the configuration, or self-signed at first
//! start so that opportunistic TLS works out of the box.

use std::path::Path;
use std::sync::Arc;

/// A DER certificate, as [`certificates_from_pem`] returns it.
pub use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

/// The STARTTLS acceptor sessions use.
pub type Acceptor = TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM text held no certificate or no private key, or was malformed.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating or saving the self-signed certificate failed.
    #[error("self-signed certificate: {0}")]
    SelfSigned(String),
}

/// Builds an acceptor from PEM text (certificate chain and private key).
pub fn acceptor_from_pem(cert_pem: &str, key_pem: &str) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificates in PEM text (empty when there are none or the text is
/// malformed): what the queue CLI pins for an HTTPS management listener.
pub fn certificates_from_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Writes a private key readable by its owner only (0600), whatever the
/// umask: the generated key also serves the management API over HTTPS,
/// whose certificate the queue CLI trusts, so a local user who could read
/// it could stand in for the server to the CLI.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created: an existing file (a
    // pair half written before) is narrowed too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Where [`self_signed`] keeps the generated certificate under `dir`.
pub fn self_signed_path(dir: &Path) -> std::path::PathBuf {
    dir.join("tls").join("cert.pem")
}

/// Loads `tls/cert.pem` and `tls/key.pem` under `dir`, generating a self-signed
/// pair for `hostname` first if they do not exist. Returns the acceptor and
/// whether the pair was generated now (the caller warns).
pub fn self_signed(dir: &Path, hostname: &str) -> Result<(TlsAcceptor, bool), TlsError> {
    let tls_dir = dir.join("tls");
    let cert_path = self_signed_path(dir);
    let key_path = tls_dir.join("key.pem");
    let mut generated = false;
    if !cert_path.exists() || !key_path.exists() {
        let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        std::fs::create_dir_all(&tls_dir).map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        std::fs::write(&cert_path, ck.cert.pem())
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())
            .map_err(|e| TlsError::SelfSigned(format!("{}: {e}", key_path.display())))?;
        generated = true;
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| TlsError::SelfSigned(format!("{}: {e}", p.display())))
    };
    Ok((
        acceptor_from_pem(&read(&cert_path)?, &read(&key_path)?)?,
        generated,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// The generated key is the owner's alone, whatever the umask.
    #[test]
    fn the_generated_key_is_readable_by_its_owner_only() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (_, generated) = super::self_signed(&dir, "mx.example").unwrap();
        assert!(generated);
        let mode = |name: &str| {
            std::fs::metadata(dir.join("tls").join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("key.pem"), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
