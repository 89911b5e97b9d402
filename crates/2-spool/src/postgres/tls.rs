//! TLS to PostgreSQL through rustls with the ring provider, as everywhere
//! else in Ferrymail: tokio-postgres only asks for an implementation of its
//! `MakeTlsConnect` trait, and these sixty lines save a dependency
//! (tokio-postgres-rustls) and keep aws-lc out of the build.
//!
//! The server certificate is verified against Mozilla's roots
//! (webpki-roots), or against the CA file named by `sslrootcert` in the URL,
//! as with libpq; the host name in the URL must match the certificate.
//!
//! SCRAM channel binding (`-PLUS`) is not offered: tls-server-end-point
//! needs the hash algorithm of the certificate's signature, which would mean
//! an X.509 parser. Authentication is still SCRAM (or what the server asks
//! for) over a verified TLS connection.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::store::StoreError;

/// Makes a verified rustls connection for each new PostgreSQL connection.
#[derive(Clone)]
pub struct RustlsConnect(Arc<rustls::ClientConfig>);

impl RustlsConnect {
    /// Trusts the CA certificates in `root_file` (PEM) if given, else
    /// Mozilla's roots.
    pub fn new(root_file: Option<&Path>) -> Result<RustlsConnect, StoreError> {
        let mut roots = RootCertStore::empty();
        match root_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    StoreError::Engine(format!("cannot read sslrootcert {}: {e}", path.display()))
                })?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        StoreError::Engine(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                if certs.is_empty() {
                    return Err(StoreError::Engine(format!(
                        "sslrootcert {} holds no certificate",
                        path.display()
                    )));
                }
                for c in certs {
                    roots.add(c).map_err(|e| {
                        StoreError::Engine(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Engine(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RustlsConnect(Arc::new(config)))
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnectTo;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnectTo, Self::Error> {
        Ok(RustlsConnectTo {
            config: self.0.clone(),
            name: ServerName::try_from(host.to_string())?,
        })
    }
}

/// One connection attempt to a named server.
pub struct RustlsConnectTo {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnectTo {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// An established TLS connection to the server.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
