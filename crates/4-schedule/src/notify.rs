//! When a notification is due: the table of the DSN issue, applied to one
//! queue event and the recipient's NOTIFY parameter (RFC 3461 §4.1). Pure.
//!
//! | event | NOTIFY | notification |
//! |---|---|---|
//! | failed (5xx, null MX, ...) or expired | absent, or with FAILURE | failure |
//! | a notify age of the schedule reached | with DELAY | delay |
//! | delivered over LMTP (final delivery here) | with SUCCESS | success, action `delivered` |
//! | accepted by an SMTP next hop without DSN | with SUCCESS | success, action `relayed` (§6.2.2) |
//! | accepted by an SMTP next hop with DSN | any | none: the next hop took the duty over (§6.2.1) |
//! | anything | NEVER | none |
//!
//! **Delay notices are not sent when NOTIFY is absent.** RFC 3461 §4.1 lets
//! the MTA treat an absent NOTIFY as either `FAILURE` or `FAILURE,DELAY`; the
//! DSN issue chooses `FAILURE`, as Postfix does by default
//! (`delay_warning_time = 0`). A sender who wants delay notices asks for
//! them with NOTIFY=DELAY; the schedule's `notify` ages say when.
//!
//! Whether the sender can receive a notification at all (the null sender
//! cannot: RFC 3461 §6.2, RFC 5321 §4.5.5) is a property of the message,
//! not of one recipient's event: [`owes`] adds it.
//!
//! # Why it lives in the queue engine
//!
//! The queue engine records a notice that is owed in the same store write
//! as the outcome it reports (the "notice owed" invariant, see
//! `ARCHITECTURE.md`), so it must know whether one is owed; the DSN layer
//! (`ferrymail-report`) depends on this crate and uses the same functions
//! (re-exported as `ferrymail_report::notify`), so the policy exists once.

use ferrymail_spool::{Envelope, Notify};

use crate::event::EventKind;

/// The three kinds of notification. Events of one message and one kind that
/// arrive together are reported in one notification (see the report
/// crate's `batch` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Some recipients failed for good (action `failed`): a 5xx, or expiry.
    Failure,
    /// Some recipients are still being retried past a notify age (action
    /// `delayed`).
    Delay,
    /// Some recipients were delivered here or relayed to a next hop without
    /// DSN (actions `delivered` and `relayed`).
    Success,
}

impl Kind {
    /// The word used in logs and in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Success => "success",
        }
    }
}

/// The kind of notification that is *owed* to the sender of `envelope`
/// about recipient `rcpt` after `event`: [`wanted`] under its NOTIFY, and
/// never to the null sender (RFC 3461 §6.2, RFC 5321 §4.5.5). The queue
/// engine records what this returns with the outcome; for the null sender
/// it returns `None`, so a double bounce (its copy to
/// `report.dsn.double-bounce`, if configured) stays best effort and is not
/// kept across a crash.
pub fn owes(envelope: &Envelope, rcpt: u32, event: &EventKind) -> Option<Kind> {
    if envelope.is_null_sender() {
        return None;
    }
    let notify = envelope
        .recipients
        .get(rcpt as usize)
        .map(|r| r.notify)
        .unwrap_or_default();
    wanted(notify, event)
}

/// The kind of notification `event` calls for under the recipient's
/// `notify` parameter, or `None` when it calls for none (see the module
/// table).
pub fn wanted(notify: Notify, event: &EventKind) -> Option<Kind> {
    let (failure, delay, success) = match notify {
        Notify::Never => return None,
        // RFC 3461 §4.1: the MTA's choice; ours is FAILURE only.
        Notify::Default => (true, false, false),
        Notify::On {
            success,
            failure,
            delay,
        } => (failure, delay, success),
    };
    match event {
        EventKind::Failed { .. } | EventKind::Expired { .. } => failure.then_some(Kind::Failure),
        EventKind::Delayed { .. } => delay.then_some(Kind::Delay),
        // Final delivery here (LMTP): "delivered" (RFC 3464 §2.3.3).
        EventKind::Delivered { lmtp: true, .. } => success.then_some(Kind::Success),
        // An SMTP next hop with DSN got the NOTIFY parameter and reports
        // from now on (RFC 3461 §6.2.1): nothing from here.
        EventKind::Delivered { lmtp: false, .. } => None,
        // RFC 3461 §6.2.2: the next hop cannot carry the request further.
        EventKind::Relayed { .. } => success.then_some(Kind::Success),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymail_deliver::RemoteReply;

    fn reply(code: u16) -> RemoteReply {
        RemoteReply {
            code,
            status: None,
            text: "x".into(),
        }
    }

    fn on(success: bool, failure: bool, delay: bool) -> Notify {
        Notify::On {
            success,
            failure,
            delay,
        }
    }

    /// The issue's table, row by row, for every NOTIFY form.
    #[test]
    fn the_table() {
        let failed = EventKind::Failed {
            reason: "r".into(),
            reply: Some(reply(550)),
        };
        let expired = EventKind::Expired {
            reason: "r".into(),
            reply: None,
        };
        let delayed = EventKind::Delayed {
            notify_num: 1,
            will_retry_until: None,
            reason: "r".into(),
            reply: None,
        };
        let lmtp = EventKind::Delivered {
            reply: reply(250),
            lmtp: true,
        };
        let smtp_dsn = EventKind::Delivered {
            reply: reply(250),
            lmtp: false,
        };
        let relayed = EventKind::Relayed { reply: reply(250) };
        use Kind::*;
        let all = [&failed, &expired, &delayed, &lmtp, &smtp_dsn, &relayed];
        let cases: [(Notify, [Option<Kind>; 6]); 6] = [
            (
                Notify::Default,
                [Some(Failure), Some(Failure), None, None, None, None],
            ),
            (Notify::Never, [None; 6]),
            (
                on(false, true, false),
                [Some(Failure), Some(Failure), None, None, None, None],
            ),
            (
                on(false, false, true),
                [None, None, Some(Delay), None, None, None],
            ),
            (
                on(true, false, false),
                [None, None, None, Some(Success), None, Some(Success)],
            ),
            (
                on(true, true, true),
                [
                    Some(Failure),
                    Some(Failure),
                    Some(Delay),
                    Some(Success),
                    None,
                    Some(Success),
                ],
            ),
        ];
        for (notify, want) in cases {
            let got: Vec<Option<Kind>> = all.iter().map(|e| wanted(notify, e)).collect();
            assert_eq!(got, want.to_vec(), "{notify:?}");
        }
    }

    /// Nothing is owed to the null sender, whatever NOTIFY says; otherwise
    /// `owes` is `wanted` under the recipient's own NOTIFY.
    #[test]
    fn owes_nothing_to_the_null_sender() {
        let mut env = ferrymail_spool::conformance::sample_envelope(1, 2);
        let failed = EventKind::Failed {
            reason: "r".into(),
            reply: Some(reply(550)),
        };
        // Recipient 0 has NOTIFY=SUCCESS,FAILURE; recipient 1 NOTIFY=NEVER.
        assert_eq!(owes(&env, 0, &failed), Some(Kind::Failure));
        assert_eq!(owes(&env, 1, &failed), None);
        // Beyond the recipient list: the default (failures only).
        assert_eq!(owes(&env, 9, &failed), Some(Kind::Failure));
        env.sender.clear();
        assert_eq!(owes(&env, 0, &failed), None);
    }
}
