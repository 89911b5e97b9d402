//! The management listener: a small HTTP/1.1 JSON API over the spool.
//!
//! It answers loopback clients only, unless a bearer token is configured; then
//! it answers only clients that present the token (INTERFACE.md).

use arc_swap::ArcSwapOption;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ferrymail_spool::{AdminAction, EntryKey, Envelope, MessageId, QueueEntry, Spool, now_millis};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::view::*;

/// Entries read per store round trip while listing.
const SCAN_PAGE: usize = 4096;

/// What the API needs from the running server.
pub struct Management {
    /// The queue.
    pub spool: Spool,
    /// Required `Authorization: Bearer` token, if configured; a reload
    /// may replace it.
    pub token: ArcSwapOption<String>,
    /// `submit-token`: a bearer token good for `POST /api/submit` only
    /// (local submission), so that whoever may send mail need not be able
    /// to administer the queue; a reload may replace it.
    pub submit_token: ArcSwapOption<String>,
    /// HTTPS (`tls.implicit` on the listener): every connection starts
    /// with a TLS handshake with this certificate, which a reload may
    /// replace. `None`: plain HTTP.
    pub tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// The queue engine, when one runs: told about every change an action
    /// makes in the store, and asked to flush. `None`: actions change the
    /// store only and flush answers 503.
    pub control: Option<Arc<dyn QueueControl>>,
    /// What `GET /metrics` (and so the dashboard) reports. `None`: 503.
    pub metrics: Option<Arc<dyn crate::metrics::MetricsSource>>,
    /// Local submission (`POST /api/submit`, used by `ferrymail
    /// sendmail`). `None`: 503.
    pub submit: Option<Arc<dyn LocalSubmit>>,
    /// Configuration reload (`POST /api/reload`, used by `ferrymail
    /// reload`). `None`: 503.
    pub reload: Option<Arc<dyn Reload>>,
}

/// Reading the configuration file again and putting it in force without a
/// restart (`ferrymail reload`, or SIGHUP), as Postfix's `postfix reload`.
/// Defined here so that operate depends on none of the stages; the server
/// binary implements it.
pub trait Reload: Send + Sync + 'static {
    /// Reloads; answers what was done, or why nothing was.
    fn reload(&self) -> ControlFuture<Result<ReloadReport, ReloadError>>;
}

/// What a reload did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// The file that was read.
    pub file: String,
    /// The new configuration's warnings (as `ferrymail check` prints them).
    pub warnings: Vec<String>,
    /// Settings that changed but take effect only at the next restart
    /// (listeners, stores, cluster identity); they are still as before.
    pub restart_needed: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has errors (each `file:line: problem`); the configuration
    /// in force stays (HTTP 400).
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// There is nothing to reload, or the server could not take up a valid
    /// configuration (HTTP 409); the configuration in force stays.
    #[error("{0}")]
    Refused(String),
}

/// Local submission: how mail made on this host (cron, applications,
/// `ferrymail sendmail`) enters the queue without an SMTP session, with
/// `source = 'local'` for the routing expressions. Defined here so that
/// operate depends on neither receive nor the queue engine; the server
/// binary implements it.
pub trait LocalSubmit: Send + Sync + 'static {
    /// The largest message accepted (`session.data.max-message-size`).
    fn max_size(&self) -> usize;

    /// Queues `contents` from `sender` (empty: the null sender) to
    /// `recipients`; answers the queue id once the message is durable.
    fn submit(
        &self,
        sender: String,
        recipients: Vec<String>,
        contents: Bytes,
    ) -> ControlFuture<Result<String, SubmitError>>;
}

/// Why a local submission was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Bad addresses or contents (HTTP 400): nothing was queued.
    #[error("{0}")]
    BadRequest(String),
    /// The spool could not make it durable (HTTP 503): try again.
    #[error("{0}")]
    Unavailable(String),
}

/// A boxed future, so [`QueueControl`] stays object-safe without extra
/// dependencies.
pub type ControlFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the management API needs from the queue engine. Defined here, not in
/// the engine's crate, so that operate depends on neither the scheduler nor
/// receive; the server binary connects the two.
///
/// Hold, release, retry and cancel are applied to the store by the API (so
/// they take effect even for entries the engine has not indexed yet) and then
/// reported with [`QueueControl::reread`], so the engine's in-memory index
/// follows: a held entry leaves it, a released or retried one is due again, a
/// cancelled one is forgotten.
pub trait QueueControl: Send + Sync + 'static {
    /// An action changed these entries in the store (`retried`: they were
    /// retried, so suspended destinations of theirs are probed now): the
    /// engine re-reads them, and the future resolves once its index holds
    /// what it read, so that the next command (a flush, say) sees them.
    fn reread(&self, keys: Vec<EntryKey>, retried: bool) -> ControlFuture<()>;

    /// `ferrymail queue flush [TARGET]`: attempt now every queued recipient
    /// of `target` (a domain, `@domain` or `#queue`, as ETRN), or of every
    /// destination for `None`. Answers how many messages were started.
    fn flush(&self, target: Option<String>) -> ControlFuture<Result<usize, ControlError>>;

    /// `ferrymail queue requeue`: route these entries again with the
    /// routing expressions as configured now. Answers how many were
    /// (entries being delivered right now are not).
    fn requeue(&self, keys: Vec<EntryKey>) -> ControlFuture<Result<usize, ControlError>> {
        let _ = keys;
        Box::pin(async { Err(ControlError::Unavailable("no queue engine".into())) })
    }

    /// `ferrymail queue bounce`: fail these entries now with `reason`, and
    /// notify their senders as for any permanent failure. Answers how many
    /// recipients were failed (entries being delivered right now are not).
    fn bounce(
        &self,
        keys: Vec<EntryKey>,
        reason: String,
    ) -> ControlFuture<Result<usize, ControlError>> {
        let _ = (keys, reason);
        Box::pin(async { Err(ControlError::Unavailable("no queue engine".into())) })
    }
}

/// Why [`QueueControl::flush`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The target is not a domain or queue name (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The queue engine is not running (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// Serves the API on `listener` until `shutdown` is cancelled.
///
/// Bounded, since the listener may face the network (a token and TLS): at
/// most [`MAX_CONNECTIONS`] at once, each closed when a request's header
/// section takes longer than [`HEADER_READ`] (also between requests: an
/// idle connection), a JSON body longer than [`BODY_READ`]; and without a
/// token a client that is not on loopback is closed at once, before it
/// sends anything. Connections are file descriptors the SMTP listeners
/// share; a client that opens them and sends nothing must not use them up.
pub async fn serve(listener: TcpListener, mgmt: Arc<Management>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "management accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        if mgmt.token.load().is_none() && !is_loopback(peer.ip()) {
            tracing::info!(remote = %peer.ip(), "management: closed a connection from off loopback (no token is configured)");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %peer.ip(), limit = MAX_CONNECTIONS, "management: too many connections; closed a new one");
            continue;
        };
        let mgmt = mgmt.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match mgmt.tls.load_full() {
                None => serve_connection(stream, mgmt, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, mgmt, peer).await,
                        Ok(Err(e)) => {
                            tracing::info!(remote = %peer.ip(), error = %e, "management: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::info!(remote = %peer.ip(), "management: TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

/// How long a client of an HTTPS management listener has to complete the
/// TLS handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Most management connections open at once; a new one beyond is closed.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client has to send a request's header section, counted from
/// when the connection is ready for one (so also how long it may sit idle).
pub const HEADER_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client has to send a JSON request body.
pub const BODY_READ: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a client has to send the message of `POST /api/submit`: as
/// long as an SMTP client has for its DATA (5 minutes by default), so that
/// a client that sends a header section and then nothing does not hold a
/// connection slot for ever.
pub const SUBMIT_BODY_READ: std::time::Duration = std::time::Duration::from_secs(300);

/// Largest JSON request body taken (a bulk action names at most a few
/// thousand ids per request).
pub const MAX_JSON_BODY: usize = 4 << 20;

/// Loopback, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, how
/// a client of 127.0.0.1 looks to a listener on `[::]`).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Answers the requests of one connection, plain or over TLS.
async fn serve_connection<S>(stream: S, mgmt: Arc<Management>, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let mgmt = mgmt.clone();
        async move { Ok::<_, Infallible>(handle(&mgmt, peer, req).await) }
    });
    let _ = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// A 400 for a filter given with an empty value (see [`Filter::blank`]).
fn blank_filter(filter: &Filter) -> Option<Response<Full<Bytes>>> {
    filter.blank().map(|name| {
        error(
            StatusCode::BAD_REQUEST,
            format!("filter {name} is empty: it would match everything"),
        )
    })
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_default()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &ApiError { error: msg.into() })
}

/// Without a token, "a loopback client" includes a web browser on this
/// host (or one reaching the listener through `ssh -L`), and any page it
/// opens may send requests here. Two rules keep such pages out, as the
/// JSON APIs of other local daemons do:
///
/// * **DNS rebinding.** A page whose own name was made to resolve to
///   127.0.0.1 sends its name as `Host`; only an address or `localhost` is
///   answered (what the queue commands, and an operator typing the URL,
///   send).
/// * **Cross-site requests.** A page may POST without asking first only
///   with the form types (`application/x-www-form-urlencoded`,
///   `multipart/form-data`, `text/plain`) or none; a body in those could
///   still be read as JSON, so a POST must say `application/json` (or any
///   other type, which a browser sends only after a CORS preflight this
///   API never approves).
///
/// With a token neither is needed: a page cannot present it.
fn browser_refusal(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if let Some(host) = req.headers().get("host") {
        let host = host.to_str().unwrap_or("");
        // `[::1]:8025`, `127.0.0.1:8025`, `localhost`, `LOCALHOST:8025`.
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if name.parse::<std::net::IpAddr>().is_err() && !name.eq_ignore_ascii_case("localhost") {
            return Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host '{host}' is not an address or localhost; without a token the API answers requests for those only (configure a token to use a name)"
                ),
            ));
        }
    }
    if req.method() == Method::POST {
        let media = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let simple = match media.as_deref() {
            None | Some("") => true,
            Some(m) => matches!(
                m,
                "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
            ),
        };
        if simple {
            return Some(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a POST must have Content-Type: application/json",
            ));
        }
    }
    None
}

async fn handle(
    mgmt: &Management,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // The dashboard page holds no data: with a token configured it is
    // served to anyone who may reach the listener, and asks for the token
    // to read `/metrics` with.
    let dashboard = req.method() == Method::GET && req.uri().path() == "/dashboard";
    let token = mgmt.token.load();
    match token.as_deref() {
        Some(_) if dashboard => {}
        Some(token) => {
            let presented = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let is = |t: &str, want: &str| constant_time_eq(t.as_bytes(), want.as_bytes());
            match presented {
                Some(t) if is(t, token) => {}
                Some(t)
                    if mgmt
                        .submit_token
                        .load()
                        .as_deref()
                        .is_some_and(|s| is(t, s)) =>
                {
                    if !(req.method() == Method::POST && req.uri().path() == "/api/submit") {
                        return error(
                            StatusCode::FORBIDDEN,
                            "the submit token may only submit mail (POST /api/submit)",
                        );
                    }
                }
                _ => return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
            }
        }
        None if !is_loopback(peer.ip()) => {
            return error(
                StatusCode::FORBIDDEN,
                "management API answers loopback clients only unless a token is configured",
            );
        }
        None => {
            if let Some(refusal) = browser_refusal(&req) {
                return refusal;
            }
        }
    }
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let result = match (method, path.as_str()) {
        (Method::GET, "/metrics") => match &mgmt.metrics {
            Some(m) => {
                let text = crate::metrics::render(&m.families().await);
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap_or_default())
            }
            None => Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no metrics in this process",
            )),
        },
        (Method::GET, "/dashboard") => Ok(Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from_static(DASHBOARD.as_bytes())))
            .unwrap_or_default()),
        (Method::GET, "/api/health") => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (Method::GET, "/api/queue/messages") => {
            let filter = Filter {
                queue: query.get("queue").cloned(),
                sender: query.get("sender").cloned(),
                rcpt: query.get("rcpt").cloned(),
                rcpt_domain: query.get("rcpt_domain").cloned(),
                lane: query.get("lane").cloned(),
            };
            if let Some(e) = bad_lane(filter.lane.as_deref()) {
                return e;
            }
            if let Some(e) = blank_filter(&filter) {
                return e;
            }
            list(mgmt, &filter).await.map(|l| json(StatusCode::OK, &l))
        }
        (Method::GET, "/api/queue/shape") => {
            let by = query.get("by").map(String::as_str).unwrap_or("domain");
            if !["domain", "queue", "sender"].contains(&by) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("by={by}: rows are by 'domain', 'sender' or 'queue'"),
                );
            }
            let lane = query.get("lane").map(String::as_str);
            if let Some(e) = bad_lane(lane) {
                return e;
            }
            shape(mgmt, by, query.get("queue").map(String::as_str), lane)
                .await
                .map(|v| json(StatusCode::OK, &v))
        }
        (Method::GET, p)
            if let Some(id) = p
                .strip_prefix("/api/queue/messages/")
                .and_then(|rest| rest.strip_suffix("/contents")) =>
        {
            match id.parse::<MessageId>() {
                Err(_) => Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("bad message id '{id}'"),
                )),
                Ok(id) => match mgmt.spool.blob.get(id).await {
                    Ok(Some(bytes)) => Ok(Response::builder()
                        .header("content-type", "message/rfc822")
                        .body(Full::new(bytes))
                        .unwrap_or_default()),
                    Ok(None) => Ok(error(
                        StatusCode::NOT_FOUND,
                        format!("no contents for {id}"),
                    )),
                    Err(e) => Err(e.to_string()),
                },
            }
        }
        (Method::GET, p) if p.starts_with("/api/queue/messages/") => {
            let id = &p["/api/queue/messages/".len()..];
            match id.parse::<MessageId>() {
                Err(_) => Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("bad message id '{id}'"),
                )),
                Ok(id) => show(mgmt, id).await.map(|v| match v {
                    Some(v) => json(StatusCode::OK, &v),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("no message {id} in the queue"),
                    ),
                }),
            }
        }
        (Method::POST, "/api/queue/action") => match read_json::<ActionRequest>(req).await {
            Err(e) => Ok(error(StatusCode::BAD_REQUEST, e)),
            Ok(a) => match bad_lane(a.filter.lane.as_deref()) {
                Some(e) => return e,
                None => action(mgmt, &a).await,
            },
        },
        (Method::POST, "/api/submit") => {
            let Some(submit) = mgmt.submit.clone() else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this server does not take local submissions",
                );
            };
            let recipients: Vec<String> = query
                .get("to")
                .map(|t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if recipients.is_empty() {
                return error(StatusCode::BAD_REQUEST, "no recipients (to=...)");
            }
            let sender = query.get("from").cloned().unwrap_or_default();
            let limit = submit.max_size();
            let body = match read_body(req, limit, SUBMIT_BODY_READ).await {
                Ok(b) => b,
                Err(BodyError::Late(e)) => return error(StatusCode::REQUEST_TIMEOUT, e),
                Err(BodyError::Other(e)) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("message refused: {e} (the limit is {limit} bytes)"),
                    );
                }
            };
            match submit.submit(sender, recipients, body).await {
                Ok(id) => Ok(json(StatusCode::OK, &serde_json::json!({"id": id}))),
                Err(SubmitError::BadRequest(e)) => Ok(error(StatusCode::BAD_REQUEST, e)),
                Err(SubmitError::Unavailable(e)) => Ok(error(StatusCode::SERVICE_UNAVAILABLE, e)),
            }
        }
        (Method::POST, "/api/reload") => match &mgmt.reload {
            None => Ok(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server cannot reload its configuration",
            )),
            Some(r) => match r.reload().await {
                Ok(report) => Ok(json(StatusCode::OK, &report)),
                Err(e @ ReloadError::Invalid(_)) => {
                    Ok(error(StatusCode::BAD_REQUEST, e.to_string()))
                }
                Err(e @ ReloadError::Refused(_)) => Ok(error(StatusCode::CONFLICT, e.to_string())),
            },
        },
        (Method::POST, "/api/queue/flush") => {
            let domain = query.get("domain").cloned();
            let result = match &mgmt.control {
                Some(c) => c.flush(domain).await,
                None => Err(ControlError::Unavailable("queue is not running".into())),
            };
            match result {
                Ok(messages) => Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"flushed": true, "messages": messages}),
                )),
                Err(ControlError::BadRequest(e)) => Ok(error(StatusCode::BAD_REQUEST, e)),
                Err(ControlError::Unavailable(e)) => Ok(error(StatusCode::SERVICE_UNAVAILABLE, e)),
            }
        }
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
    };
    result.unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// The live dashboard: one static page that polls `GET /metrics` every
/// second and shows rates, the queue and the process (see
/// `dashboard.html`).
const DASHBOARD: &str = include_str!("dashboard.html");

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = read_body(req, MAX_JSON_BODY, BODY_READ)
        .await
        .map_err(|e| match e {
            BodyError::Late(e) => e,
            BodyError::Other(e) => format!("request body: {e}"),
        })?;
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON body: {e}"))
}

/// Why a request body could not be read.
enum BodyError {
    /// Not all of it arrived in time.
    Late(String),
    /// Over the limit, or the connection failed.
    Other(String),
}

/// A request body of at most `limit` bytes that must arrive within
/// `within`, so that a client cannot hold a connection slot by sending
/// slowly.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let body = http_body_util::Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(within, body).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(BodyError::Other(e.to_string())),
        Err(_) => Err(BodyError::Late(format!(
            "request body not sent within {} s",
            within.as_secs()
        ))),
    }
}

/// Decodes `a=b&c=d` with percent-decoding and `+` as space.
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match hex(b[i + 1])
                        .zip(hex(b[i + 2]))
                        .map(|(h, l)| (h * 16 + l) as u8)
                    {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Every entry of the queue, grouped by message, in id order.
async fn all_entries(spool: &Spool) -> Result<BTreeMap<MessageId, Vec<QueueEntry>>, String> {
    let mut by_msg: BTreeMap<MessageId, Vec<QueueEntry>> = BTreeMap::new();
    let mut after: Option<EntryKey> = None;
    loop {
        let page = spool
            .data
            .scan(after, SCAN_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        for e in page {
            by_msg.entry(e.key.message).or_default().push(e);
        }
    }
    Ok(by_msg)
}

/// The messages `keys` belong to, each once, in order.
fn messages_of(keys: &[EntryKey]) -> Vec<MessageId> {
    let mut messages: Vec<MessageId> = keys.iter().map(|k| k.message).collect();
    messages.sort();
    messages.dedup();
    messages
}

/// Message `id`'s entries as the store has them now.
async fn entries_now(mgmt: &Management, id: MessageId) -> Result<Vec<QueueEntry>, String> {
    mgmt.spool.data.entries(id).await.map_err(|e| e.to_string())
}

/// Which of `keys` are held now.
async fn held_among(mgmt: &Management, keys: &[EntryKey]) -> Result<Vec<EntryKey>, String> {
    let mut sorted = keys.to_vec();
    sorted.sort();
    let mut held = Vec::new();
    for id in messages_of(&sorted) {
        held.extend(
            entries_now(mgmt, id)
                .await?
                .iter()
                .filter(|e| e.held && sorted.binary_search(&e.key).is_ok())
                .map(|e| e.key),
        );
    }
    Ok(held)
}

/// After a bounce of `keys`, in one read of each message: how many
/// messages it emptied (nothing left but owed notices), and holds again
/// those of `held` (held before the bounce released them) that it did not
/// take (in flight at that moment, or another node's), which would
/// otherwise go out at their next retry, the opposite of what was asked.
async fn after_bounce(
    mgmt: &Management,
    keys: &[EntryKey],
    mut held: Vec<EntryKey>,
) -> Result<usize, String> {
    held.sort();
    let mut removed = 0;
    let mut again = Vec::new();
    for id in messages_of(keys) {
        let left = entries_now(mgmt, id).await?;
        if left.iter().all(|e| e.is_notice_owed()) {
            removed += 1;
        }
        again.extend(
            left.iter()
                .filter(|e| !e.held && !e.is_notice_owed() && held.binary_search(&e.key).is_ok())
                .map(|e| e.key),
        );
    }
    if !again.is_empty() {
        let n = mgmt
            .spool
            .data
            .admin(&again, AdminAction::Hold)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            recipients = n,
            "queue bounce: held mail not bounced (in flight) is held again"
        );
        if let Some(c) = mgmt.control.as_ref() {
            c.reread(again, false).await;
        }
    }
    Ok(removed)
}

/// Every queued message with its envelope and the entries `keep` keeps,
/// in id order (messages whose envelope is gone meanwhile are skipped).
/// Entries are filtered before any envelope is read: with a large backlog,
/// `--queue q` reads the envelopes of q's messages only.
async fn all_messages(
    spool: &Spool,
    keep: impl Fn(&QueueEntry) -> bool,
) -> Result<Vec<(Envelope, Vec<QueueEntry>)>, String> {
    let mut out = Vec::new();
    for (id, mut entries) in all_entries(spool).await? {
        entries.retain(&keep);
        if entries.is_empty() {
            continue;
        }
        if let Some(env) = spool.data.envelope(id).await.map_err(|e| e.to_string())? {
            out.push((env, entries));
        }
    }
    Ok(out)
}

/// The part of a filter that needs no envelope: the virtual queue and lane.
fn queue_matches(filter: &Filter) -> impl Fn(&QueueEntry) -> bool + '_ {
    move |e| filter.matches_entry(e)
}

/// A 400 for a lane that is not one of [`crate::view::LANES`].
fn bad_lane(lane: Option<&str>) -> Option<Response<Full<Bytes>>> {
    lane.filter(|l| !crate::view::LANES.contains(l)).map(|l| {
        error(
            StatusCode::BAD_REQUEST,
            format!("lane={l}: lane must be pending, deferred or held"),
        )
    })
}

async fn list(mgmt: &Management, filter: &Filter) -> Result<MessageList, String> {
    let mut messages = Vec::new();
    let mut recipients = 0;
    for (env, entries) in all_messages(&mgmt.spool, queue_matches(filter)).await? {
        let matching: Vec<QueueEntry> = entries
            .into_iter()
            .filter(|e| filter.matches(&env, e))
            .collect();
        if !matching.is_empty() {
            recipients += matching.len();
            messages.push(MessageView::new(&env, &matching));
        }
    }
    Ok(MessageList {
        messages,
        recipients,
    })
}

/// `queue shape`: every queued recipient (not held unless `lane` is
/// `held`, and not one finished and waiting only for its notice) counted
/// by recipient domain, sender domain or virtual queue and by its
/// message's age.
async fn shape(
    mgmt: &Management,
    by: &str,
    queue: Option<&str>,
    lane: Option<&str>,
) -> Result<ShapeView, String> {
    let now = now_millis();
    let mut items = Vec::new();
    let wanted = |e: &QueueEntry| {
        let in_lane = match lane {
            Some(l) => crate::view::in_lane(e, l),
            None => !e.held,
        };
        in_lane && !e.is_notice_owed() && queue.is_none_or(|q| e.queue == q)
    };
    for (env, entries) in all_messages(&mgmt.spool, wanted).await? {
        for e in entries {
            let domain = |address: &str| {
                address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_else(|| "(no domain)".into())
            };
            let name = match by {
                "queue" => e.queue.clone(),
                // qshape -s: who is sending what piles up (a compromised
                // account, a newsletter run).
                "sender" if env.sender.is_empty() => "MAILER-DAEMON".into(),
                "sender" => domain(&env.sender),
                _ => env
                    .recipients
                    .get(e.key.rcpt as usize)
                    .map(|r| domain(&r.address))
                    .unwrap_or_else(|| "(no domain)".into()),
            };
            items.push((name, now.saturating_sub(env.arrived)));
        }
    }
    Ok(ShapeView::build(by, items))
}

async fn show(mgmt: &Management, id: MessageId) -> Result<Option<MessageView>, String> {
    let Some(env) = mgmt
        .spool
        .data
        .envelope(id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let entries = entries_now(mgmt, id).await?;
    Ok(Some(MessageView::new(&env, &entries)))
}

/// What a bounced recipient's notice says when the operator gave no reason.
pub const DEFAULT_BOUNCE_REASON: &str =
    "the postmaster returned this message without delivering it";

async fn action(mgmt: &Management, a: &ActionRequest) -> Result<Response<Full<Bytes>>, String> {
    let kind = match a.action.as_str() {
        "retry" => Some(AdminAction::Retry { now: now_millis() }),
        "hold" => Some(AdminAction::Hold),
        "release" => Some(AdminAction::Release),
        "cancel" | "bounce" | "requeue" => None,
        other => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown action '{other}': use retry, hold, release, cancel, bounce or requeue"
                ),
            ));
        }
    };
    let bounce = a.action == "bounce";
    let requeue = a.action == "requeue";
    if (bounce || requeue) && mgmt.control.is_none() {
        return Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} needs the queue engine, which this server does not run",
                a.action
            ),
        ));
    }
    let mut keys = Vec::new();
    if !a.recipients.is_empty() {
        for r in &a.recipients {
            let Ok(message) = r.id.parse::<MessageId>() else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("bad message id '{}'", r.id),
                ));
            };
            keys.push(EntryKey {
                message,
                rcpt: r.rcpt,
            });
        }
    } else if !a.ids.is_empty() {
        for id in &a.ids {
            let Ok(id) = id.parse::<MessageId>() else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    format!("bad message id '{id}'"),
                ));
            };
            let entries = mgmt
                .spool
                .data
                .entries(id)
                .await
                .map_err(|e| e.to_string())?;
            if entries.is_empty() {
                return Ok(error(
                    StatusCode::NOT_FOUND,
                    format!("no message {id} in the queue"),
                ));
            }
            keys.extend(entries.iter().map(|e| e.key));
        }
    } else {
        if let Some(e) = blank_filter(&a.filter) {
            return Ok(e);
        }
        if a.filter == Filter::default() && !a.all {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "name message ids, a filter, or --all",
            ));
        }
        for (env, entries) in all_messages(&mgmt.spool, queue_matches(&a.filter)).await? {
            keys.extend(
                entries
                    .iter()
                    .filter(|e| a.filter.matches(&env, e))
                    .map(|e| e.key),
            );
        }
    }
    let result = match kind {
        None if bounce || requeue => {
            // Held mail is taken too, as Postfix's postsuper -r and -f
            // release it: released here, so that the engine's claim gets it.
            let held = if bounce {
                held_among(mgmt, &keys).await?
            } else {
                Vec::new()
            };
            mgmt.spool
                .data
                .admin(&keys, AdminAction::Release)
                .await
                .map_err(|e| e.to_string())?;
            let control = mgmt.control.as_ref().expect("checked above");
            let done = if requeue {
                control.requeue(keys.clone()).await
            } else {
                let reason = a
                    .reason
                    .clone()
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_BOUNCE_REASON.to_string());
                control.bounce(keys.clone(), reason).await
            };
            let recipients = done.map_err(|e| e.to_string())?;
            let removed_messages = if bounce {
                after_bounce(mgmt, &keys, held).await?
            } else {
                0
            };
            // The engine re-reads the entries itself: no `changed` below.
            tracing::info!(action = %a.action, recipients, "queue action");
            return Ok(json(
                StatusCode::OK,
                &ActionResult {
                    recipients,
                    removed_messages,
                },
            ));
        }
        Some(k) => ActionResult {
            recipients: mgmt
                .spool
                .data
                .admin(&keys, k)
                .await
                .map_err(|e| e.to_string())?,
            removed_messages: 0,
        },
        None => {
            let gone = mgmt
                .spool
                .data
                .cancel(&keys)
                .await
                .map_err(|e| e.to_string())?;
            // One store for both removed the contents with the entries.
            for id in gone.iter().filter(|_| !mgmt.spool.unified) {
                mgmt.spool
                    .blob
                    .delete(*id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ActionResult {
                recipients: keys.len(),
                removed_messages: gone.len(),
            }
        }
    };
    if let Some(c) = &mgmt.control
        && !keys.is_empty()
    {
        // Answered once the engine holds the change: `queue release` then
        // `queue flush` finds the released mail.
        c.reread(keys, matches!(kind, Some(AdminAction::Retry { .. })))
            .await;
    }
    tracing::info!(action = %a.action, recipients = result.recipients, "queue action");
    Ok(json(StatusCode::OK, &result))
}

#[cfg(test)]
mod tests {
    use super::{is_loopback, parse_query};

    /// A client of 127.0.0.1 seen by a listener on `[::]` is on loopback.
    #[test]
    fn loopback_includes_ipv4_mapped() {
        for (ip, want) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:192.0.2.1", false),
            ("192.0.2.1", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("queue=a%20b&sender=x+y%40z&empty=&bad=%zz&trail=%4&utf=%\u{e9}x");
        assert_eq!(q["queue"], "a b");
        assert_eq!(q["sender"], "x y@z");
        assert_eq!(q["empty"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["trail"], "%4");
        assert_eq!(q["utf"], "%\u{e9}x");
    }
}
