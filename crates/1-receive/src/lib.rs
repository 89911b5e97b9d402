//! Receive: the SMTP server side of Ferrymail.
//!
//! One tokio task per connection runs a [`session::Session`]. Protocol parsing
//! lives in [`protocol`] and does no I/O; this crate's only socket work is
//! accepting connections and reading and writing them. A message is answered
//! with 250 only after [`ferrymail_spool::Spool::accept`] returned, i.e. once its
//! contents, envelope and queue entries are durable.

pub mod protocol;
pub mod server;
pub mod session;
pub mod tls;

use std::sync::Arc;

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

/// Everything sessions share: limits, policy, the spool, and the channels to the
/// rest of the server. Built once at start-up.
pub struct Receiver {
    /// Limits and timeouts.
    pub params: SessionParams,
    /// `session.rcpt.relay`: may this session relay to a non-local domain.
    pub relay: Expr,
    /// `session.etrn.allow`: may this session use ETRN.
    pub etrn_allow: Expr,
    /// Picks virtual queue and priority weight for each recipient.
    pub router: Arc<Router>,
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
    /// Cancelled on SIGTERM: idle sessions say 421 and close; sessions in a
    /// transaction finish it first.
    pub shutdown: CancellationToken,
}
