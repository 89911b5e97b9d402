//! The client side of the management API, used by `ferrymail queue ...`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server is not running or not reachable at that address.
    #[error("cannot reach the management listener at {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("management API request failed: {0}")]
    Http(String),
    /// The server answered with an error document.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's explanation.
        message: String,
    },
    /// The request timed out.
    #[error("management API did not answer within {0:?}")]
    Timeout(Duration),
}

/// A connection target: address and optional bearer token.
#[derive(Clone, Debug)]
pub struct Client {
    /// The management listener.
    pub addr: SocketAddr,
    /// Bearer token, if the server requires one.
    pub token: Option<String>,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl Client {
    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let stream =
            TcpStream::connect(self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr,
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<crate::view::ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        Ok(bytes)
    }
}

/// Percent-encodes a query value.
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
