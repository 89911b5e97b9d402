//! Deliver: the client side. Takes a [`Job`] (one message, some of its
//! recipients, one destination) from the scheduler and returns one
//! [`RecipientOutcome`] per recipient.
//!
//! The scheduler decides *when* and *how many at once*; this crate decides
//! *how*: which host, which connection, which extensions.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferrymail_spool::Envelope;

/// One delivery attempt: a message and the recipients of it that share one
/// destination.
#[derive(Clone, Debug)]
pub struct Job {
    /// The message's envelope.
    pub envelope: Arc<Envelope>,
    /// The stored contents, Received header included, sent as they are.
    pub contents: Bytes,
    /// Indices into `envelope.recipients`; all share `route` and `domain`.
    pub recipients: Vec<u32>,
    /// Route id (`mx` or a `[queue.route.<id>]`).
    pub route: String,
    /// The recipients' domain (lower case): the next-hop domain for `mx`.
    pub domain: String,
    /// The virtual queue, for the delivery log.
    pub queue: String,
}

/// A reply from the next hop, kept whole for logs and DSNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteReply {
    /// Basic code, e.g. 550.
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. "5.1.1", when the server sent one.
    pub status: Option<String>,
    /// The text, lines joined with a space.
    pub text: String,
}

impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            Some(s) => write!(f, "{} {} {}", self.code, s, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// What happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took responsibility (2xx after DATA, or the LMTP
    /// per-recipient 2xx).
    Delivered {
        /// The accepting reply.
        reply: RemoteReply,
    },
    /// Try again later: a 4xx reply, or a network, TLS or DNS failure.
    Transient {
        /// Human-readable reason, e.g. "connection refused by 192.0.2.1:25".
        reason: String,
        /// The remote reply, when there was one.
        reply: Option<RemoteReply>,
    },
    /// Give up: a 5xx reply, a null MX, or a requirement the next hop cannot
    /// meet (SMTPUTF8 without support: 5.6.7).
    Permanent {
        /// Human-readable reason.
        reason: String,
        /// The remote reply, when there was one.
        reply: Option<RemoteReply>,
    },
}

/// Where an attempt went, for the delivery log and DSNs (Remote-MTA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The host name tried (MX name or relay address).
    pub host: String,
    /// The address connected to.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// TLS version, when TLS was used.
    pub tls: Option<String>,
    /// The next hop advertised DSN (RFC 3461); without it, a NOTIFY=SUCCESS
    /// request ends here with a "relayed" notification (§6.2.2).
    pub dsn: bool,
    /// LMTP rather than SMTP: a 2xx means final delivery ("delivered").
    pub lmtp: bool,
}

/// The result for one recipient of a [`Job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Index into the envelope's recipients.
    pub rcpt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Where it happened, if a connection was made.
    pub remote: Option<Remote>,
}

/// The scheduler's view of delivery. One implementation speaks SMTP/LMTP; the
/// scheduler's own unit tests use a scripted one (paused time cannot drive real
/// sockets).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Attempts one job. Never fails as a whole: every recipient gets an
    /// outcome.
    async fn deliver(&self, job: Job) -> Vec<RecipientOutcome>;
}

/// The key of a per-destination ready queue: the next-hop domain for MX
/// routing, or the relay route for relay routes (all its mail goes to one
/// place, whatever the recipient domain).
pub fn destination_key(route: &str, domain: &str, route_is_relay: bool) -> String {
    if route_is_relay {
        format!("route:{route}")
    } else {
        domain.to_ascii_lowercase()
    }
}
