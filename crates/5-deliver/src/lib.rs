//! Deliver: the client side. Takes a [`Job`] (one message, some of its
//! recipients, one destination) from the scheduler and returns one
//! [`RecipientOutcome`] per recipient.
//!
//! The scheduler decides *when* and *how many at once*; this crate decides
//! *how*: which host, which connection, which extensions.
//!
//! [`SmtpTransport`] is the implementation that speaks SMTP (RFC 5321) and
//! LMTP (RFC 2033). Its policies, where the RFCs leave a choice:
//!
//! * **Next hop.** Relay routes go to their address. The `mx` route looks up
//!   MX records (RFC 5321 §5.1): lowest preference first, random among
//!   equal preferences, at most `max-mx` hosts, each with at most
//!   `max-multihomed` addresses in `ip-strategy` order; no MX means the
//!   domain's own addresses (implicit MX). NXDOMAIN, or neither MX nor
//!   address records, is permanent (5.1.2); a null MX (RFC 7505) is
//!   permanent (5.1.10); SERVFAIL, REFUSED, timeouts are transient (4.4.3).
//!   A host that fails (connect, greeting, EHLO, TLS, AUTH) is skipped for
//!   the next one; when all fail the attempt is transient, with every
//!   host's failure in the reason.
//! * **TLS.** STARTTLS (RFC 3207) is used whenever offered unless
//!   `tls.mode = "disable"`. In the default `optional` mode it is
//!   opportunistic (RFC 7435, like Postfix's `may`): the session is
//!   encrypted but the certificate is not verified, because MX hosts rarely
//!   present one that verifies and the alternative is plain text. For the
//!   same reason a failed STARTTLS does not fail the host: refused (454),
//!   the session goes on in plain text (RFC 3207 §4); a broken handshake
//!   (a TLS-1.0-only server, a middlebox) is retried on a new connection
//!   without STARTTLS, as Postfix's `may` does. Opportunistic TLS never
//!   stood against an attacker who can break a handshake (they could as
//!   well strip STARTTLS from the EHLO reply); without the fallback such a
//!   host's mail would be retried until it expired. Routes with AUTH
//!   credentials do not fall back, as in Postfix: the host fails
//!   transiently and the next one is tried. `require` and implicit TLS verify the
//!   certificate (Mozilla's roots and the host name) unless
//!   `tls.allow-invalid-certs`, and `require` fails a host that does not
//!   offer STARTTLS (4.7.4).
//! * **MTA-STS** (RFC 8461, [`mta_sts`]). On MX delivery the recipient
//!   domain's policy is honoured unless `[queue.outbound.tls] mta-sts =
//!   "disable"`: under `enforce`, only the MX hosts it lists, each with
//!   STARTTLS required and its certificate verified for the MX name, as if
//!   the route said `require` (the policy outranks the route's `tls.mode`);
//!   a host that fails is skipped with 4.7.4/4.7.5, and when none is left
//!   the mail waits. `testing` and `none` change nothing. With `require`
//!   a domain without a usable policy waits (4.7.5).
//! * **AUTH** (relay routes): PLAIN, else LOGIN, and only over TLS or to a
//!   loopback address. A failure is transient.
//! * **Extensions.** PIPELINING when offered (always for LMTP); BDAT
//!   (CHUNKING) when offered, else DATA with dot-stuffing; SIZE declared and
//!   enforced (a larger message fails permanently, 5.3.4); BODY=8BITMIME,
//!   SMTPUTF8 and the DSN parameters passed on when supported. Without
//!   support: SMTPUTF8 needed → permanent 5.6.7; 8-bit MIME parts →
//!   quoted-printable (RFC 6152 §3), and 8-bit content that cannot be
//!   converted (8-bit header fields, no MIME-Version, an 8-bit attached
//!   message) → permanent 5.6.3; 8BITMIME mail that is 7-bit clean goes
//!   without BODY; DSN parameters dropped and [`Remote::dsn`] false.
//! * **Outcomes.** A RCPT reply applies to its recipient; the reply to the
//!   end of DATA (or the last BDAT) to every recipient accepted at RCPT;
//!   LMTP's per-recipient replies each to their own. Failures that are not
//!   a reply (network, TLS, DNS, local checks) have a reason that begins
//!   with an enhanced status code; [`Outcome::status`] returns it.
//! * **Connections** are pooled per [`destination_key`], reused for up to
//!   `max-messages-per-connection` transactions with RSET before each
//!   reuse, and closed with QUIT after `idle-timeout`.
//! * **Delivery log**: see the `log` module; one JSON line per recipient
//!   per attempt.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferrymail_spool::Envelope;

mod dns;
pub mod log;
pub mod mta_sts;
mod pool;
pub mod protocol;
mod session;
mod tls;
mod transport;

pub use dns::resolver_setup;
pub use transport::{BuildError, SmtpTransport, unusable_route_cas};

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
    /// Passed just before the transport sends what lets the next hop take
    /// the message (the end of DATA, the last BDAT chunk); see [`CommitGate`].
    pub gate: CommitGate,
}

/// The point of no return of one delivery, shared by the transport and
/// whoever may want to abandon the delivery (the queue engine at shutdown).
///
/// Until the transport sends the end of the message, dropping the delivery
/// loses nothing: the next hop discards a transaction that never ended, and
/// the recipients are tried again later. After it, the next hop may have
/// taken the message, and abandoning the delivery before its outcome is
/// recorded would send the message twice. The gate makes the two sides
/// agree: the transport [`enter`](Self::enter)s it before that last write
/// and does not send if it cannot; a shutdown [`close`](Self::close)s it and
/// abandons the delivery at once only if that worked. Otherwise it waits
/// for the outcome. So a SIGTERM does not wait out a next hop that never
/// greets, and never loses track of a message the next hop may have.
#[derive(Clone, Debug, Default)]
pub struct CommitGate(Arc<std::sync::atomic::AtomicU8>);

impl CommitGate {
    const OPEN: u8 = 0;
    const ENTERED: u8 = 1;
    const CLOSED: u8 = 2;

    /// The transport is about to send the end of the message: true if it
    /// may (the gate was open, or already entered by an earlier attempt of
    /// the same job), false if the delivery is being abandoned.
    pub fn enter(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.0.compare_exchange(
            Self::OPEN,
            Self::ENTERED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(state) => state == Self::ENTERED,
        }
    }

    /// Marks the delivery as past the point of no return without sending
    /// anything (it ended: its outcome must now be recorded). Same result
    /// as [`enter`](Self::enter).
    pub fn seal(&self) -> bool {
        self.enter()
    }

    /// Abandons the delivery if it has not reached the point of no return:
    /// true if it had not (the transport will not send the end now, so the
    /// delivery may be dropped), false if it has (wait for its outcome).
    pub fn close(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
            || self.0.load(Ordering::Acquire) == Self::CLOSED
    }
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

impl Outcome {
    /// The enhanced status code (RFC 3463) for DSNs and logs: the remote
    /// reply's, else the one a local reason begins with, else the class
    /// default (`2.0.0`, `4.0.0`, `5.0.0`).
    pub fn status(&self) -> String {
        let (reply, reason, default) = match self {
            Outcome::Delivered { reply } => (Some(reply), None, "2.0.0"),
            Outcome::Transient { reason, reply } => (reply.as_ref(), Some(reason), "4.0.0"),
            Outcome::Permanent { reason, reply } => (reply.as_ref(), Some(reason), "5.0.0"),
        };
        status_of(reply, reason.map(String::as_str), default)
    }
}

/// The enhanced status code (RFC 3463) of an outcome: the remote reply's,
/// else the one a locally decided reason begins with (`5.3.4 ...`), when of
/// `default`'s class; else `default` (`2.0.0`, `4.0.0`, `5.0.0`). One rule
/// for the delivery log ([`Outcome::status`]) and the notices' Status field
/// (the queue engine's events).
pub fn status_of(reply: Option<&RemoteReply>, reason: Option<&str>, default: &str) -> String {
    reply
        .and_then(|r| r.status.clone())
        .or_else(|| reason.and_then(protocol::reply::enhanced_status))
        .filter(|s| s.starts_with(&default[..1]))
        .unwrap_or_else(|| default.to_string())
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
    /// The local address the connection came from, when
    /// `[queue.outbound.source-ip]` chose it (the delivery log shows it).
    pub source: Option<IpAddr>,
}

/// Why a recipient whose route is not configured is not sent (a reload
/// removed the route, or a computed route name names none): the same
/// words whether the queue engine finds it first or the transport does.
pub fn unconfigured_route(route: &str) -> String {
    format!("4.3.5 route '{route}' is not configured (configuration changed?)")
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
    /// The next hop answered a command of the transaction (MAIL, RCPT,
    /// DATA, the end of the message) with anything but 421: it is alive,
    /// whatever became of this recipient. A transaction that then timed out
    /// at the end of a large message, or an LMTP server that fell over on
    /// this one message, is the message's trouble, not the destination's.
    pub answered: bool,
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
