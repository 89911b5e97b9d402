//! Receive: the SMTP and LMTP server side of Ferrymail.
//!
//! One tokio task per connection runs a [`session::Session`], in the
//! [`protocol::dialect::Dialect`] of its listener (SMTP, or LMTP per RFC
//! 2033, which only greets and answers the end of a message differently;
//! both queue through the same spool). Protocol parsing
//! lives in [`protocol`] and does no I/O; this crate's only socket work is
//! accepting connections and reading and writing them. A message is answered
//! with 250 only after [`ferrymail_spool::Spool::accept`] returned, i.e. once its
//! contents, envelope and queue entries are durable.

pub mod auth;
pub mod defences;
pub mod limiter;
pub mod local;
pub mod memory;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tls;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrymail_config::expr::Expr;
use ferrymail_route::Router;
use ferrymail_spool::{IdGenerator, Spool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use session::SessionParams;

/// An ETRN (RFC 1985) request, handed to the queue so it can start delivery for
/// the named node (`domain`, `@domain` or `#queue`).
#[derive(Debug)]
pub struct EtrnRequest {
    /// The argument as the client gave it.
    pub argument: String,
    /// Where the queue answers; the session turns the answer into the RFC 1985
    /// reply code.
    pub reply: tokio::sync::oneshot::Sender<EtrnAnswer>,
}

/// The queue's answer to an ETRN, one per RFC 1985 §5 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtrnAnswer {
    /// 250: queuing started (how much is unknown).
    Started,
    /// 251: no messages waiting for that node.
    NoMessages,
    /// 252 (`None`) or 253 (`Some(n)`): pending messages for the node started.
    Pending(Option<usize>),
    /// 458: unable to queue messages for the node.
    Unable,
}

/// DKIM signing of accepted mail (`[auth.dkim] sign`): which signers, and
/// the signing itself, handed in by the binary (the keys are loaded by the
/// report crate, which signs notifications with the same signers).
pub struct DkimSigning {
    /// The `[signature.<id>]` ids to sign a message with (a list, a single
    /// id, or `false`), evaluated over the message's envelope.
    pub sign: Expr,
    /// Signs `message` with signer `id`: the `DKIM-Signature` field,
    /// CRLF-terminated, an error text, or `None` for an unknown id.
    #[allow(clippy::type_complexity)]
    pub signer: Arc<dyn Fn(&str, &[u8]) -> Option<Result<String, String>> + Send + Sync>,
}

/// Everything sessions share: limits, policy, the spool, and the channels to the
/// rest of the server. Built at start-up and again by each configuration
/// reload; a session keeps the one it started with.
pub struct Receiver {
    /// Limits and timeouts.
    pub params: SessionParams,
    /// `session.rcpt.relay`: may this session relay to a non-local domain.
    pub relay: Expr,
    /// Reverse-DNS and DNSBL checks of each client, enforced at RCPT TO.
    pub defences: Arc<defences::Defences>,
    /// SPF, DKIM and DMARC verification of the mail clients send
    /// (`[auth.spf.verify]`, `[auth.dkim] verify`, `[auth.dmarc] verify`).
    pub verify: Arc<verify::Verifier>,
    /// `session.etrn.allow`: may this session use ETRN.
    pub etrn_allow: Expr,
    /// Picks virtual queue and priority weight for each recipient.
    pub router: Arc<Router>,
    /// `[queue.limiter.inbound.*]`: the rate limits counted at RCPT TO.
    pub limiters: Vec<ferrymail_config::InboundLimiter>,
    /// Their counts; shared by every receiver a reload builds, so a reload
    /// does not reset them.
    pub rate_counts: Arc<limiter::RateLimiter>,
    /// Message contents held in memory by all sessions (bounded by
    /// `params.max_memory`); shared across reloads like `rate_counts`.
    pub memory: Arc<memory::MessageMemory>,
    /// Where accepted messages go.
    pub spool: Spool,
    /// Mints message ids.
    pub ids: Arc<IdGenerator>,
    /// ETRN requests for the queue.
    pub etrn: mpsc::UnboundedSender<EtrnRequest>,
    /// Entries of every newly accepted message, so the queue can schedule them
    /// without polling the store; with their recipient domains, so it need not
    /// read the envelope back either.
    pub queued: mpsc::UnboundedSender<ferrymail_spool::Queued>,
    /// STARTTLS, when a certificate is available.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The certificate of listeners with `tls.implicit` (whether or not
    /// STARTTLS is offered).
    pub implicit_tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled on SIGTERM: idle sessions say 421 and close; sessions in a
    /// transaction finish it first.
    pub shutdown: CancellationToken,
    /// What the listeners and sessions have done, for `GET /metrics`.
    pub counters: Arc<ReceiveCounters>,
    /// SMTP AUTH, when `[session.auth] directory` is set.
    pub auth: Option<Arc<AuthSettings>>,
    /// DKIM signing of accepted mail, when `[auth.dkim] sign` can name a
    /// signer.
    pub dkim: Option<Arc<DkimSigning>>,
}

/// `[session.auth]` with its directory resolved, and the per-address
/// failure ledger: what a session needs to offer AUTH and check what it is
/// given.
#[derive(Debug)]
pub struct AuthSettings {
    /// The settings as configured.
    pub config: ferrymail_config::SessionAuth,
    /// Who may log in (the directory `config.directory` names).
    pub directory: ferrymail_config::Directory,
    /// Failures per client address, across sessions (and across reloads
    /// that keep its limits: a reload gives no password guesser a fresh
    /// allowance).
    pub ledger: Arc<auth::FailureLedger>,
}

impl AuthSettings {
    /// From the configuration; `None` when no directory is set (AUTH is
    /// not offered). `previous` (the settings before a reload) hands over
    /// its failure counts when the per-address limits stay the same.
    pub fn from_config(
        config: &ferrymail_config::Config,
        previous: Option<&AuthSettings>,
    ) -> Option<AuthSettings> {
        let a = &config.session.auth;
        let directory = config.directories.get(a.directory.as_ref()?)?.clone();
        let ledger = match previous {
            Some(p)
                if p.config.errors_per_ip == a.errors_per_ip
                    && p.config.errors_per_ip_window == a.errors_per_ip_window =>
            {
                p.ledger.clone()
            }
            _ => Arc::new(auth::FailureLedger::new(
                a.errors_per_ip,
                a.errors_per_ip_window,
            )),
        };
        Some(AuthSettings {
            config: a.clone(),
            directory,
            ledger,
        })
    }
}

/// What this node's SMTP listeners have done since it started, for
/// `GET /metrics`: the counters an operator graphs to see load, refusals
/// and what reached the spool. Relaxed atomics, bumped on the paths they
/// count; a few per message, which costs nothing measurable.
#[derive(Debug, Default)]
pub struct ReceiveCounters {
    /// TCP connections accepted (including those refused by a limit).
    pub connections: AtomicU64,
    /// Connections answered 421 by the global or per-IP limit.
    pub refused_by_limit: AtomicU64,
    /// Sessions running now.
    pub sessions_active: AtomicU64,
    /// Messages made durable and acknowledged with 250.
    pub messages: AtomicU64,
    /// Their recipients.
    pub recipients: AtomicU64,
    /// Their sizes in bytes, as stored (with the Received: header added).
    pub bytes: AtomicU64,
    /// Recipients refused because the session may not relay (554 5.7.1).
    pub relay_denied: AtomicU64,
    /// Recipients refused by an inbound rate limit (451 4.4.5).
    pub refused_by_rate: AtomicU64,
    /// Messages refused because `session.data.max-memory` was reached
    /// (452 4.3.1).
    pub refused_no_memory: AtomicU64,
    /// Recipients refused by the connection checks: a DNSBL listing or a
    /// strict iprev failure.
    pub refused_by_checks: AtomicU64,
    /// MAIL FROM commands refused by strict SPF (HELO or MAIL FROM
    /// identity), 5xx and 4xx alike.
    pub refused_by_spf: AtomicU64,
    /// Messages refused by strict DKIM (no passing signature).
    pub refused_by_dkim: AtomicU64,
    /// Messages refused by strict DMARC (a `reject` policy).
    pub refused_by_dmarc: AtomicU64,
    /// Messages refused because the spool could not make them durable
    /// (451 4.3.0): a store in trouble.
    pub store_failures: AtomicU64,
    /// AUTH attempts that failed (535): a rise is password guessing.
    pub auth_failures: AtomicU64,
}

impl ReceiveCounters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a session as active while it lives.
pub(crate) struct ActiveSession(pub(crate) Arc<ReceiveCounters>);

impl ActiveSession {
    pub(crate) fn new(counters: Arc<ReceiveCounters>) -> ActiveSession {
        counters.sessions_active.fetch_add(1, Ordering::Relaxed);
        ActiveSession(counters)
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}
