//! What the queue engine tells the rest of the server about each recipient:
//! the input of delivery status notifications (RFC 3464, the DSN issue) and of
//! anything else that wants to follow mail (metrics, audit).
//!
//! Events are emitted for every recipient whatever its message's sender and
//! NOTIFY parameter; deciding whether a notification is due (never for the
//! null sender, NOTIFY=NEVER, and so on) is the DSN layer's job, which keeps
//! that policy in one place.

use std::sync::Arc;

use bytes::Bytes;
use ferrymail_deliver::{Remote, RemoteReply};
use ferrymail_spool::{EntryKey, Envelope, UnixMillis};

/// The status code (RFC 3463) of an expiry: "delivery time expired".
pub const EXPIRED_STATUS: &str = "4.4.7";

/// One thing that happened to one recipient. Carries everything a per-recipient
/// block of `message/delivery-status` needs (RFC 3464 §2.3): the envelope (for
/// Original-Recipient, Final-Recipient, Arrival-Date, ENVID, RET), the action
/// and status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date and
/// Will-Retry-Until.
#[derive(Clone, Debug)]
pub struct Event {
    /// The message's envelope, shared by every event about it.
    pub envelope: Arc<Envelope>,
    /// Index into `envelope.recipients`.
    pub rcpt: u32,
    /// The virtual queue the recipient was scheduled in.
    pub queue: String,
    /// What happened.
    pub kind: EventKind,
    /// When the attempt this event reports ended: Last-Attempt-Date.
    pub attempt_at: UnixMillis,
    /// Delivery attempts made so far, this one included.
    pub attempts: u32,
    /// The next hop the attempt reached, if a connection was made: Remote-MTA.
    pub remote: Option<Remote>,
    /// The message contents as the attempt had them, for the part of a
    /// notification that returns the original (RFC 3464 §2, RFC 3461 §4.3).
    /// Carried here because the blob is deleted as soon as the last
    /// recipient completes, before the event is read. `None` when the
    /// contents were missing from the blob store.
    pub contents: Option<Bytes>,
}

impl Event {
    /// The recipient's queue entry key.
    pub fn key(&self) -> EntryKey {
        EntryKey {
            message: self.envelope.id,
            rcpt: self.rcpt,
        }
    }

    /// The recipient's address, as given in RCPT TO.
    pub fn recipient(&self) -> &str {
        self.envelope
            .recipients
            .get(self.rcpt as usize)
            .map(|r| r.address.as_str())
            .unwrap_or("")
    }

    /// The DSN Action field (RFC 3464 §2.3.3).
    pub fn action(&self) -> &'static str {
        match &self.kind {
            EventKind::Delivered { .. } => "delivered",
            EventKind::Relayed { .. } => "relayed",
            EventKind::Failed { .. } | EventKind::Expired { .. } => "failed",
            EventKind::Delayed { .. } => "delayed",
        }
    }

    /// The DSN Status field (RFC 3464 §2.3.4, codes of RFC 3463): the remote
    /// reply's enhanced code when it gave one and it fits the event's class,
    /// else a generic code of the right class. Expiry is always `4.4.7`.
    pub fn status(&self) -> String {
        let from_reply = |reply: Option<&RemoteReply>, class: char| {
            reply
                .and_then(|r| r.status.clone())
                .filter(|s| s.starts_with(class))
        };
        match &self.kind {
            EventKind::Delivered { reply, .. } | EventKind::Relayed { reply } => {
                from_reply(Some(reply), '2').unwrap_or_else(|| "2.0.0".into())
            }
            EventKind::Failed { reply, .. } => {
                from_reply(reply.as_ref(), '5').unwrap_or_else(|| "5.0.0".into())
            }
            EventKind::Delayed { reply, .. } => {
                from_reply(reply.as_ref(), '4').unwrap_or_else(|| "4.0.0".into())
            }
            EventKind::Expired { .. } => EXPIRED_STATUS.into(),
        }
    }
}

/// The kinds of event, one per DSN action (RFC 3464 §2.3.3) plus expiry,
/// which is a failure with its own status and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The next hop accepted the recipient and either delivered it
    /// (`lmtp`: final delivery, action "delivered") or, over SMTP, supports
    /// DSN (RFC 3461) and took over the duty to notify, so nothing is due
    /// from here.
    Delivered {
        /// The accepting reply.
        reply: RemoteReply,
        /// The next hop spoke LMTP: this was final delivery.
        lmtp: bool,
    },
    /// An SMTP next hop without DSN support accepted the recipient: a
    /// NOTIFY=SUCCESS request ends here with a "relayed" notice (RFC 3461
    /// §6.2.2).
    Relayed {
        /// The accepting reply.
        reply: RemoteReply,
    },
    /// Delivery failed permanently: a 5xx reply, a null MX, missing contents.
    Failed {
        /// Human-readable reason.
        reason: String,
        /// The remote reply, when there was one (Diagnostic-Code).
        reply: Option<RemoteReply>,
    },
    /// The recipient reached the `notify_num`-th age of its schedule's
    /// `notify` list and is still undelivered: a delay notice.
    Delayed {
        /// Which notify age this is, 1-based; also the entry's notify count
        /// after this event.
        notify_num: u32,
        /// When retrying stops (Will-Retry-Until); `None` when the schedule
        /// limits attempts instead of age.
        will_retry_until: Option<UnixMillis>,
        /// The last transient error.
        reason: String,
        /// The last remote reply, when there was one.
        reply: Option<RemoteReply>,
    },
    /// The schedule's `expire` age or `max-attempts` was reached: a permanent
    /// failure with status 4.4.7 ([`EXPIRED_STATUS`]).
    Expired {
        /// The last transient error.
        reason: String,
        /// The last remote reply, when there was one.
        reply: Option<RemoteReply>,
    },
}
