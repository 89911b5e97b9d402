//! What the queue engine tells the rest of the server about each recipient:
//! the input of delivery status notifications (RFC 3464, the DSN issue) and of
//! anything else that wants to follow mail (metrics, audit).
//!
//! Events are emitted for every recipient whatever its message's sender and
//! NOTIFY parameter. Whether a notification is owed (never for the null
//! sender, NOTIFY=NEVER, and so on) is decided once, by
//! [`crate::notify::owes`]: the manager records an owed notice in the store
//! with the outcome ([`Event::owed_notice`]), restart recovery turns it back
//! into an event ([`Event::from_owed`]), and the DSN layer settles it
//! ([`Event::discharge`]) once the notification is queued.

use std::sync::Arc;

use bytes::Bytes;
use ferrymail_deliver::{Remote, RemoteReply};
use ferrymail_spool::{
    Discharge, EntryKey, Envelope, NoticeOutcome, NoticeRemote, NoticeReply, NoticeSlot,
    OwedNotice, UnixMillis,
};

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
    /// Carried here because, when no notice is owed (a double bounce),
    /// the blob is deleted as soon as the last recipient completes, before
    /// the event is read; with a notice owed it stays until the notice is
    /// discharged, and restart recovery reads it back. `None` when the
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

    /// The record the store keeps while the notice about this event is
    /// owed (RFC 3461 §6): everything of the event but the envelope and
    /// the contents, which the store keeps anyway until the notice is
    /// discharged.
    pub fn owed_notice(&self) -> OwedNotice {
        let reply = |r: &RemoteReply| NoticeReply {
            code: r.code,
            status: r.status.clone(),
            text: r.text.clone(),
        };
        OwedNotice {
            queue: self.queue.clone(),
            outcome: match &self.kind {
                EventKind::Delivered { reply: r, lmtp } => NoticeOutcome::Delivered {
                    reply: reply(r),
                    lmtp: *lmtp,
                },
                EventKind::Relayed { reply: r } => NoticeOutcome::Relayed { reply: reply(r) },
                EventKind::Failed { reason, reply: r } => NoticeOutcome::Failed {
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
                EventKind::Delayed {
                    notify_num,
                    will_retry_until,
                    reason,
                    reply: r,
                } => NoticeOutcome::Delayed {
                    notify_num: *notify_num,
                    will_retry_until: *will_retry_until,
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
                EventKind::Expired { reason, reply: r } => NoticeOutcome::Expired {
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
            },
            attempt_at: self.attempt_at,
            attempts: self.attempts,
            remote: self.remote.as_ref().map(|r| NoticeRemote {
                host: r.host.clone(),
                ip: r.ip,
                port: r.port,
                tls: r.tls.clone(),
                dsn: r.dsn,
                lmtp: r.lmtp,
            }),
        }
    }

    /// The event an owed notice recorded, rebuilt at restart from the
    /// store: the inverse of [`Event::owed_notice`], with the envelope and
    /// contents read back.
    pub fn from_owed(
        envelope: Arc<Envelope>,
        rcpt: u32,
        notice: &OwedNotice,
        contents: Option<Bytes>,
    ) -> Event {
        let reply = |r: &NoticeReply| RemoteReply {
            code: r.code,
            status: r.status.clone(),
            text: r.text.clone(),
        };
        Event {
            envelope,
            rcpt,
            queue: notice.queue.clone(),
            kind: match &notice.outcome {
                NoticeOutcome::Delivered { reply: r, lmtp } => EventKind::Delivered {
                    reply: reply(r),
                    lmtp: *lmtp,
                },
                NoticeOutcome::Relayed { reply: r } => EventKind::Relayed { reply: reply(r) },
                NoticeOutcome::Failed { reason, reply: r } => EventKind::Failed {
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
                NoticeOutcome::Delayed {
                    notify_num,
                    will_retry_until,
                    reason,
                    reply: r,
                } => EventKind::Delayed {
                    notify_num: *notify_num,
                    will_retry_until: *will_retry_until,
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
                NoticeOutcome::Expired { reason, reply: r } => EventKind::Expired {
                    reason: reason.clone(),
                    reply: r.as_ref().map(reply),
                },
            },
            attempt_at: notice.attempt_at,
            attempts: notice.attempts,
            remote: notice.remote.as_ref().map(|r| Remote {
                host: r.host.clone(),
                ip: r.ip,
                port: r.port,
                tls: r.tls.clone(),
                dsn: r.dsn,
                lmtp: r.lmtp,
                source: None,
            }),
            contents,
        }
    }

    /// What settles the notice about this event once the notification is
    /// queued ([`ferrymail_spool::DataStore::discharge`]). Harmless for an
    /// event that owed nothing: the store finds no matching notice.
    pub fn discharge(&self) -> Discharge {
        Discharge {
            key: self.key(),
            slot: match self.kind {
                EventKind::Delayed { notify_num, .. } => NoticeSlot::Delay { notify_num },
                _ => NoticeSlot::Final,
            },
        }
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
    /// else the code a locally decided reason begins with (`5.3.4` for a
    /// message over the next hop's SIZE, `5.6.7` for SMTPUTF8 it lacks,
    /// `4.4.1` for a refused connection), else a generic code of the right
    /// class. Expiry is always `4.4.7`.
    pub fn status(&self) -> String {
        use ferrymail_deliver::status_of;
        match &self.kind {
            EventKind::Delivered { reply, .. } | EventKind::Relayed { reply } => {
                status_of(Some(reply), None, "2.0.0")
            }
            EventKind::Failed { reply, reason } => status_of(reply.as_ref(), Some(reason), "5.0.0"),
            EventKind::Delayed { reply, reason, .. } => {
                status_of(reply.as_ref(), Some(reason), "4.0.0")
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
    /// Delivery failed permanently: a 5xx reply, a null MX.
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymail_spool::conformance::sample_envelope;

    fn reply(code: u16, status: Option<&str>) -> RemoteReply {
        RemoteReply {
            code,
            status: status.map(str::to_string),
            text: format!("text of {code}"),
        }
    }

    /// Every kind of event survives the trip through the store's owed
    /// notice unchanged, and names the slot its discharge settles.
    #[test]
    fn owed_notice_round_trips_every_kind() {
        let env = Arc::new(sample_envelope(3, 2));
        let kinds = [
            EventKind::Delivered {
                reply: reply(250, Some("2.0.0")),
                lmtp: true,
            },
            EventKind::Relayed {
                reply: reply(250, None),
            },
            EventKind::Failed {
                reason: "550 no".into(),
                reply: Some(reply(550, Some("5.1.1"))),
            },
            EventKind::Delayed {
                notify_num: 2,
                will_retry_until: Some(99),
                reason: "452 full".into(),
                reply: None,
            },
            EventKind::Expired {
                reason: "timeout".into(),
                reply: Some(reply(451, None)),
            },
        ];
        for kind in kinds {
            let e = Event {
                envelope: env.clone(),
                rcpt: 1,
                queue: "q".into(),
                kind: kind.clone(),
                attempt_at: 12_345,
                attempts: 4,
                remote: Some(Remote {
                    host: "mx.example".into(),
                    ip: "192.0.2.1".parse().unwrap(),
                    port: 2525,
                    tls: Some("TLSv1.3".into()),
                    dsn: true,
                    lmtp: false,
                    source: None,
                }),
                contents: Some(Bytes::from_static(b"x")),
            };
            let owed = e.owed_notice();
            assert_eq!(owed.action(), e.action());
            let back = Event::from_owed(env.clone(), 1, &owed, e.contents.clone());
            assert_eq!(back.kind, e.kind);
            assert_eq!(back.queue, e.queue);
            assert_eq!(back.attempt_at, e.attempt_at);
            assert_eq!(back.attempts, e.attempts);
            assert_eq!(back.remote, e.remote);
            assert_eq!(back.status(), e.status());
            assert_eq!(e.discharge().slot, owed.which());
            assert_eq!(
                owed.is_final(),
                !matches!(kind, EventKind::Delayed { .. }),
                "{kind:?}"
            );
        }
    }

    /// A failure decided here, with no reply to quote, keeps the code its
    /// reason starts with: a message over the next hop's SIZE was a bare
    /// `5.0.0` in the notice's Status field, which bounce processors read
    /// (found by the misbehaving-next-hop scenario).
    #[test]
    fn status_comes_from_the_reply_then_the_local_reason() {
        let env = Arc::new(sample_envelope(1, 1));
        let status = |kind: EventKind| {
            Event {
                envelope: env.clone(),
                rcpt: 0,
                queue: "q".into(),
                kind,
                attempt_at: 0,
                attempts: 1,
                remote: None,
                contents: None,
            }
            .status()
        };
        let failed = |reason: &str, reply: Option<RemoteReply>| EventKind::Failed {
            reason: reason.into(),
            reply,
        };
        let delayed = |reason: &str| EventKind::Delayed {
            notify_num: 1,
            will_retry_until: None,
            reason: reason.into(),
            reply: None,
        };
        assert_eq!(
            status(failed("5.3.4 mx: message size 259 exceeds 100", None)),
            "5.3.4"
        );
        assert_eq!(status(failed("5.6.7 mx: SMTPUTF8 needed", None)), "5.6.7");
        assert_eq!(
            status(failed("5.3.4 local words", Some(reply(550, Some("5.1.1"))))),
            "5.1.1",
            "the remote reply's code wins"
        );
        assert_eq!(status(failed("4.4.1 wrong class", None)), "5.0.0");
        assert_eq!(status(failed("no code here", None)), "5.0.0");
        assert_eq!(status(delayed("4.4.1 mx: connect failed")), "4.4.1");
        assert_eq!(
            status(delayed("delivery temporarily suspended: 4.4.1 x")),
            "4.0.0"
        );
    }
}
