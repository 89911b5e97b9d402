//! Outbound TLS (RFC 3207 STARTTLS, RFC 8314 implicit TLS): the rustls
//! client configurations, with the ring provider only.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The two client configurations a transport needs.
#[derive(Clone)]
pub struct TlsConfigs {
    /// Verifies the certificate chain against the roots and the name.
    pub verify: Arc<ClientConfig>,
    /// Accepts any certificate (`tls.allow-invalid-certs`); the handshake
    /// signatures are still checked, so the session is encrypted with
    /// whoever holds the presented key.
    pub any: Arc<ClientConfig>,
    /// The roots `verify` trusts beyond Mozilla's (the operating system's,
    /// tests' private CAs), so that a route's own authorities
    /// ([`TlsConfigs::verify_also`]) are added to them.
    extra: Vec<CertificateDer<'static>>,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the protocol versions or the roots.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A route's `tls.ca` held no usable certificate.
    #[error("tls.ca: {0}")]
    Ca(String),
}

impl TlsConfigs {
    /// Mozilla's root programme (webpki-roots), the operating system's
    /// trust store ([`os_roots`]), and `extra` roots, e.g. a private CA of
    /// a relay or a test.
    pub fn new(extra: &[CertificateDer<'static>]) -> Result<TlsConfigs, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let os = os_roots();
        roots.add_parsable_certificates(os.iter().cloned());
        for cert in extra {
            roots.add(cert.clone())?;
        }
        let extra: Vec<CertificateDer<'static>> =
            os.into_iter().chain(extra.iter().cloned()).collect();
        let verify = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth();
        Ok(TlsConfigs {
            verify: Arc::new(verify),
            any: Arc::new(any),
            extra,
        })
    }

    /// A verifying configuration that also trusts the authorities in
    /// `pem` (a route's `tls.ca`): a relay whose certificate comes from a
    /// private CA is then checked, not waved through with
    /// `allow-invalid-certs`.
    pub fn verify_also(&self, pem: &str) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let certs = route_ca(pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        roots.add_parsable_certificates(self.extra.iter().cloned());
        roots.add_parsable_certificates(certs);
        Ok(Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

/// The certificates of a route's `tls.ca` (PEM), each one rustls takes as a
/// trust anchor; an error when there is none or one is not usable. What
/// `ferrymail check` (and a reload) checks, without building a whole
/// verifying configuration.
pub fn route_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::Ca("no certificate".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| TlsSetupError::Ca(e.to_string()))?;
    }
    Ok(certs)
}

/// The operating system's trust anchors (`/etc/ssl/certs` and the like,
/// or the files `SSL_CERT_FILE`/`SSL_CERT_DIR` name), read once, when the
/// transport is built: a site's own CA installed the usual way is then trusted
/// for `require` routes and MTA-STS as it is by the system's other
/// programs. None readable is not an error: Mozilla's roots remain.
pub fn os_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "operating system trust store");
    }
    found.certs
}

/// The name to verify and send as SNI: the host name tried, or its address
/// for a relay given as an IP.
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}

/// "TLSv1.3" for the delivery log and Remote-MTA notes.
pub fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    }
}

/// Certificate "verification" for `allow-invalid-certs`.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
