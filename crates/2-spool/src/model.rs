//! The spool's data model: what an accepted message and its per-recipient queue
//! entries look like once they are durable.
//!
//! Two record kinds exist, and they are deliberately unequal in size:
//!
//! * an [`Envelope`] is written once, at accept time, and read when a delivery
//!   attempt or a DSN needs the sender, the DSN parameters or the recipient list;
//! * a [`QueueEntry`] exists per recipient, is small (tens of bytes), and is the
//!   only thing the scheduler reads and rewrites. A retry rewrites one entry, never
//!   the envelope and never the contents.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Every time in the spool uses it, so that
/// due times, leases and arrival dates compare without conversions and survive a
/// restart (an `Instant` would not).
pub type UnixMillis = u64;

/// Returns the current time as [`UnixMillis`]. One place, so tests and stores agree.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The domain of an address, lower-cased and without a trailing dot; `None`
/// without an "@". Every stage that keys anything on a domain (relay control,
/// routing, the scheduler's destinations, schedules, DSN variables) uses this
/// one normalization, so `User@Example.ORG.` lands in the same place
/// everywhere.
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
}

/// An address as expressions see it (`sender`, `rcpt`): the domain part
/// lower-cased, the local part as given. Domains are case-insensitive
/// (RFC 5321 §2.4) and clients write them as they like, so that
/// `rcpt == 'abuse@example.org'` must also match `abuse@Example.ORG`; a
/// local part may be case-sensitive, so it is left alone.
pub fn address_for_expressions(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

/// Identifies one accepted message across the data store, the blob store, logs and
/// the queue CLI.
///
/// Layout (most significant first): 42 bits of milliseconds since the Unix epoch,
/// 10 bits of node tag, 12 bits of per-millisecond sequence. Ids therefore sort by
/// arrival, which keeps store keys append-mostly, and two nodes sharing one
/// database (the PostgreSQL issue) cannot mint the same id unless their node tags
/// collide. Printed as 16 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The arrival time encoded in the id.
    pub fn timestamp(self) -> UnixMillis {
        self.0 >> 22
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(MessageId)
    }
}

/// Mints [`MessageId`]s for one node. Lock-free: sessions on every core call it
/// concurrently on the accept path.
#[derive(Debug)]
pub struct IdGenerator {
    node_tag: u64,
    last: std::sync::atomic::AtomicU64,
}

impl IdGenerator {
    /// `node_tag` is reduced to 10 bits.
    pub fn new(node_tag: u64) -> Self {
        Self {
            node_tag: node_tag & 0x3ff,
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts after `newest`, an id this node minted in an earlier run (the
    /// newest its store holds): a clock that stepped back across a restart
    /// then cannot mint an id a queued message already has.
    pub fn seed(&self, newest: MessageId) {
        self.last
            .fetch_max(newest.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node tag ids are minted with.
    pub fn node_tag(&self) -> u16 {
        self.node_tag as u16
    }

    /// Returns an id larger than every id this generator returned before, even if
    /// the clock steps back or more than 4096 ids are needed in one millisecond.
    pub fn next(&self) -> MessageId {
        use std::sync::atomic::Ordering;
        let base = (now_millis() << 22) | (self.node_tag << 12);
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = if base > prev {
                base
            } else if prev & 0xfff != 0xfff {
                // Same millisecond (or clock went back): bump the sequence.
                prev + 1
            } else {
                // The sequence is full: the next millisecond, with this
                // node's tag. (Carrying into the tag bits would mint ids of
                // another node's tag, which a shared store would refuse or,
                // worse, take for that node's message.)
                (((prev >> 22) + 1) << 22) | (self.node_tag << 12)
            };
            match self.last.compare_exchange_weak(
                prev,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return MessageId(candidate),
                Err(actual) => prev = actual,
            }
        }
    }
}

/// Where a message came from. Routing and DSN rules depend on it: notifications
/// (`Dsn`) go to the bounce queue and never cause further notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Received over SMTP or LMTP.
    Smtp,
    /// A delivery status notification generated by Ferrymail itself.
    Dsn,
    /// Submitted locally (CLI or API).
    Local,
}

impl Source {
    /// The name used in expressions (`source == 'dsn'`) and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Smtp => "smtp",
            Source::Dsn => "dsn",
            Source::Local => "local",
        }
    }
}

/// The BODY parameter of MAIL FROM (RFC 6152, RFC 3030). Delivery needs it to
/// decide whether the next hop can take the message as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BodyType {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME (RFC 6152).
    EightBitMime,
    /// BODY=BINARYMIME (RFC 3030), only valid with BDAT.
    BinaryMime,
}

/// The RET parameter of MAIL FROM (RFC 3461 §4.3): how much of the original a
/// failure notification returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// RET=FULL: the whole message.
    Full,
    /// RET=HDRS: the headers only.
    Headers,
}

/// The NOTIFY parameter of RCPT TO (RFC 3461 §4.1): which events the sender wants
/// to hear about for this recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Notify {
    /// No NOTIFY parameter: the MTA decides (failures, and delays at its discretion).
    #[default]
    Default,
    /// NOTIFY=NEVER.
    Never,
    /// NOTIFY=SUCCESS,FAILURE,DELAY in any non-empty combination.
    On {
        /// NOTIFY included SUCCESS.
        success: bool,
        /// NOTIFY included FAILURE.
        failure: bool,
        /// NOTIFY included DELAY.
        delay: bool,
    },
}

/// One RCPT TO of a transaction, with its DSN parameters, as the envelope keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path as given, without angle brackets.
    pub address: String,
    /// ORCPT (RFC 3461 §4.2), kept decoded as `addr-type;address` (see
    /// [`crate::orcpt`] for its encodings).
    pub orcpt: Option<String>,
    /// NOTIFY (RFC 3461 §4.1).
    pub notify: Notify,
}

/// Everything known about a message except its contents and its per-recipient
/// queue state. Written once when the message is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The message's id; also the key of its contents in the blob store.
    pub id: MessageId,
    /// The reverse-path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// All recipients, in RCPT order; queue entries refer to them by index.
    pub recipients: Vec<Recipient>,
    /// Size of the stored contents in bytes, Received header included.
    pub size: u64,
    /// When the final 250 was decided; Arrival-Date of DSNs.
    pub arrived: UnixMillis,
    /// BODY parameter.
    pub body: BodyType,
    /// SMTPUTF8 was given on MAIL FROM (RFC 6531).
    pub smtputf8: bool,
    /// RET parameter (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// ENVID parameter (RFC 3461 §4.4), xtext-decoded.
    pub envid: Option<String>,
    /// MT-PRIORITY (RFC 6710), -9..=9, 0 when absent.
    pub mt_priority: i8,
    /// Where the message came from.
    pub source: Source,
    /// The client's IP address, for SMTP-received mail.
    pub remote_ip: Option<IpAddr>,
    /// The EHLO/HELO argument.
    pub helo: Option<String>,
    /// The SASL identity, when the client authenticated.
    pub authenticated_as: Option<String>,
}

impl Envelope {
    /// True for the null reverse-path, whose messages never cause notifications.
    pub fn is_null_sender(&self) -> bool {
        self.sender.is_empty()
    }

    /// The domain of recipient `rcpt` as the scheduler keys destinations
    /// ([`domain_of`]), `""` when it has none or the index is out of range.
    /// One copy of the rule for the queue engine, which reads it from a
    /// stored envelope, and for receive and the DSN layer, which compute it
    /// before handing new mail over ([`Queued::with_envelope`]).
    pub fn rcpt_domain(&self, rcpt: u32) -> String {
        self.recipients
            .get(rcpt as usize)
            .and_then(|r| domain_of(&r.address))
            .unwrap_or_default()
    }
}

/// Newly accepted mail as receive and the DSN layer hand it to the queue
/// engine (its `queued` channel): the entries, and, when the sender had the
/// envelope at hand, each entry's recipient domain.
///
/// The queue engine indexes entries by destination domain, which lives in
/// the envelope, not the entry. Without `domains` it reads the envelope back
/// from the data store, one round trip per message (a PostgreSQL query, see
/// BENCHMARKS.md, "Where the time goes" of issue 6); the senders just wrote
/// that envelope, so they pass the domains along instead.
#[derive(Clone, Debug, Default)]
pub struct Queued {
    /// The entries, of one or more messages, in key order per message.
    pub entries: Vec<QueueEntry>,
    /// `domains[i]` is the recipient domain of `entries[i]`
    /// ([`Envelope::rcpt_domain`]); `None` makes the queue engine read the
    /// envelopes.
    pub domains: Option<Vec<String>>,
}

impl Queued {
    /// Entries of `envelope`'s message with their domains taken from it, so
    /// the queue engine need not read the envelope back.
    pub fn with_envelope(entries: Vec<QueueEntry>, envelope: &Envelope) -> Queued {
        let domains = entries
            .iter()
            .map(|e| envelope.rcpt_domain(e.key.rcpt))
            .collect();
        Queued {
            entries,
            domains: Some(domains),
        }
    }
}

impl From<Vec<QueueEntry>> for Queued {
    /// Entries without their domains: the queue engine reads the envelopes,
    /// as it did before [`Queued`] carried domains.
    fn from(entries: Vec<QueueEntry>) -> Queued {
        Queued {
            entries,
            domains: None,
        }
    }
}

/// Names one recipient of one message: the key of a [`QueueEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryKey {
    /// The message.
    pub message: MessageId,
    /// Index into [`Envelope::recipients`].
    pub rcpt: u32,
}

impl EntryKey {
    /// A 12-byte big-endian encoding that sorts like the key itself, for ordered
    /// key-value stores.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.message.0.to_be_bytes());
        out[8..].copy_from_slice(&self.rcpt.to_be_bytes());
        out
    }

    /// Inverse of [`EntryKey::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; 12] = b.try_into().ok()?;
        Some(EntryKey {
            message: MessageId(u64::from_be_bytes(b[..8].try_into().ok()?)),
            rcpt: u32::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// Which of a virtual queue's two lanes an entry waits in. Fresh mail (first
/// attempts) and retries are kept apart so a backlog of retries never delays new
/// mail; see the scheduler for how the lanes are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// Not yet attempted.
    Pending,
    /// Attempted at least once and waiting for its next retry.
    Deferred,
}

impl Lane {
    /// The lower-case name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Pending => "pending",
            Lane::Deferred => "deferred",
        }
    }
}

/// Identifies a Ferrymail node that may hold leases. Stable across restarts, so a
/// restarted node recognises (and may reclaim) its own leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A claim on an entry by one node until a deadline. While a lease is live no
/// other node may attempt the entry; when it lapses (the node died) any node may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node delivering the entry.
    pub owner: NodeId,
    /// When the claim lapses unless renewed.
    pub until: UnixMillis,
}

/// Where the router placed one recipient. Computed once, at accept time, and
/// kept in the entry so that a configuration change never re-routes mail that is
/// already queued behind the operator's back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Virtual queue name.
    pub queue: String,
    /// Schedule id.
    pub schedule: String,
    /// Route id.
    pub route: String,
    /// Priority weight: higher is attempted first within a lane.
    pub weight: i32,
}

impl Routing {
    /// The built-in placement: queue `default`, schedule `default`, route `mx`.
    pub fn default_with_weight(weight: i32) -> Self {
        Routing {
            queue: "default".into(),
            schedule: "default".into(),
            route: "mx".into(),
            weight,
        }
    }
}

/// The queue state of one recipient of one message: small, and the only record
/// the scheduler reads or rewrites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Message and recipient.
    pub key: EntryKey,
    /// The virtual queue the router chose.
    pub queue: String,
    /// The `[queue.schedule.<id>]` the router chose: retry, notify, expiry.
    pub schedule: String,
    /// The `[queue.route.<id>]` the router chose (`mx` is built in).
    pub route: String,
    /// Pending (first attempt) or deferred (retry).
    pub lane: Lane,
    /// Held by an operator: never attempted until released.
    pub held: bool,
    /// When the entry may next be attempted.
    pub due: UnixMillis,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Priority weight: higher goes first within a lane.
    pub weight: i32,
    /// The node currently delivering it, if any.
    pub lease: Option<Lease>,
    /// The last transient error, for the CLI and delay notifications.
    pub last_error: Option<String>,
    /// How many delay notifications were sent.
    pub notify_count: u32,
    /// A delivery status notification about this recipient that is owed
    /// and not yet durably queued (RFC 3461 §6, RFC 3464). Recorded in the
    /// same write as the outcome it reports, so a crash between the outcome
    /// and the notice cannot lose the notice; cleared by
    /// [`crate::DataStore::discharge`] once the notice is in the spool.
    /// A final one ([`OwedNotice::is_final`]) also ends the entry's
    /// delivery: see [`QueueEntry::is_notice_owed`].
    pub notice: Option<OwedNotice>,
}

impl QueueEntry {
    /// A fresh entry in the pending lane, due at `due`, placed where the
    /// router said.
    pub fn new(key: EntryKey, routing: Routing, due: UnixMillis) -> Self {
        QueueEntry {
            key,
            queue: routing.queue,
            schedule: routing.schedule,
            route: routing.route,
            lane: Lane::Pending,
            held: false,
            due,
            attempts: 0,
            weight: routing.weight,
            lease: None,
            last_error: None,
            notify_count: 0,
            notice: None,
        }
    }

    /// True when the recipient has its final outcome and only the
    /// notification about it is still owed: the entry is never claimed or
    /// delivered again, and it (with its envelope and contents) stays only
    /// until [`crate::DataStore::discharge`] removes it.
    pub fn is_notice_owed(&self) -> bool {
        self.notice.as_ref().is_some_and(OwedNotice::is_final)
    }

    /// True when `node` may attempt this entry at `now`: due, not held, and not
    /// leased by anyone else (an expired lease counts as none), and not
    /// finished with a notice owed.
    pub fn is_claimable(&self, now: UnixMillis) -> bool {
        !self.held
            && !self.is_notice_owed()
            && self.due <= now
            && self.lease.is_none_or(|l| l.until <= now)
    }
}

/// The remote reply a notice quotes (Diagnostic-Code, RFC 3464 §2.3.6), as
/// the spool keeps it. Mirrors the deliver crate's reply, which the spool
/// cannot name (it sits below delivery in the crate graph).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeReply {
    /// Basic code, e.g. 550.
    pub code: u16,
    /// Enhanced status code (RFC 3463), when the server sent one.
    pub status: Option<String>,
    /// The reply text.
    pub text: String,
}

/// The next hop an attempt reached (Remote-MTA, RFC 3464 §2.3.5), as the
/// spool keeps it for an owed notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRemote {
    /// The host name tried.
    pub host: String,
    /// The address connected to.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// TLS version, when TLS was used.
    pub tls: Option<String>,
    /// The next hop advertised DSN (RFC 3461).
    pub dsn: bool,
    /// It spoke LMTP.
    pub lmtp: bool,
}

/// What happened to the recipient, as an owed notice reports it: one
/// variant per DSN action (RFC 3464 §2.3.3) plus expiry. Mirrors the queue
/// engine's event kinds, which the spool cannot name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeOutcome {
    /// Final delivery (LMTP) or accepted by a DSN-capable hop.
    Delivered {
        /// The accepting reply.
        reply: NoticeReply,
        /// The next hop spoke LMTP.
        lmtp: bool,
    },
    /// Accepted by an SMTP hop without DSN (RFC 3461 §6.2.2).
    Relayed {
        /// The accepting reply.
        reply: NoticeReply,
    },
    /// Failed permanently.
    Failed {
        /// Human-readable reason.
        reason: String,
        /// The remote reply, if any.
        reply: Option<NoticeReply>,
    },
    /// Still undelivered at a notify age: a delay notice.
    Delayed {
        /// Which notify age, 1-based.
        notify_num: u32,
        /// Will-Retry-Until, when the schedule limits age.
        will_retry_until: Option<UnixMillis>,
        /// The last transient error.
        reason: String,
        /// The last remote reply, if any.
        reply: Option<NoticeReply>,
    },
    /// Expired (status 4.4.7).
    Expired {
        /// The last transient error.
        reason: String,
        /// The last remote reply, if any.
        reply: Option<NoticeReply>,
    },
}

/// A delivery status notification that is owed about one recipient and not
/// yet durably queued. It carries every per-recipient field the
/// notification needs (RFC 3464 §2.3) except what the envelope and the
/// contents give, so that restart recovery can compose the notice a crash
/// interrupted (at-least-once: see `ARCHITECTURE.md`, "notice owed").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedNotice {
    /// The virtual queue the recipient was scheduled in.
    pub queue: String,
    /// What happened.
    pub outcome: NoticeOutcome,
    /// Last-Attempt-Date.
    pub attempt_at: UnixMillis,
    /// Attempts made, the reported one included.
    pub attempts: u32,
    /// Remote-MTA, when a connection was made.
    pub remote: Option<NoticeRemote>,
}

impl OwedNotice {
    /// True for a notice about the recipient's final outcome (every action
    /// but `delayed`): the entry is finished once the notice is queued.
    pub fn is_final(&self) -> bool {
        !matches!(self.outcome, NoticeOutcome::Delayed { .. })
    }

    /// Which notice this is, as [`crate::DataStore::discharge`] names it.
    pub fn which(&self) -> NoticeSlot {
        match self.outcome {
            NoticeOutcome::Delayed { notify_num, .. } => NoticeSlot::Delay { notify_num },
            _ => NoticeSlot::Final,
        }
    }

    /// The DSN Action field (RFC 3464 §2.3.3), for the queue CLI.
    pub fn action(&self) -> &'static str {
        match self.outcome {
            NoticeOutcome::Delivered { .. } => "delivered",
            NoticeOutcome::Relayed { .. } => "relayed",
            NoticeOutcome::Failed { .. } | NoticeOutcome::Expired { .. } => "failed",
            NoticeOutcome::Delayed { .. } => "delayed",
        }
    }
}

/// Names the notice a [`Discharge`] settles, so that settling an older
/// notice never clears a newer one recorded since (a second delay notice,
/// or the final outcome that superseded a delay notice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NoticeSlot {
    /// The notice about the final outcome.
    Final,
    /// The delay notice for this notify age.
    Delay {
        /// The notify age, 1-based.
        notify_num: u32,
    },
}

/// One notice that is now durably queued, for [`crate::DataStore::discharge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Discharge {
    /// The recipient the notice reported on.
    pub key: EntryKey,
    /// Which notice.
    pub slot: NoticeSlot,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full sequence goes on in the next millisecond with the same tag,
    /// never into the tag bits; a seed is a floor.
    #[test]
    fn ids_keep_their_tag_and_pass_the_seed() {
        let g = IdGenerator::new(5);
        let far = (now_millis() + 60_000) << 22;
        g.seed(MessageId(far | (5 << 12) | 0xffe));
        let a = g.next();
        let b = g.next();
        assert_eq!(a.0, far | (5 << 12) | 0xfff);
        assert_eq!(b.0, (far + (1 << 22)) | (5 << 12), "{b:?}");
        assert_eq!((b.0 >> 12) & 0x3ff, 5);
        assert_eq!(g.node_tag(), 5);
    }
}
