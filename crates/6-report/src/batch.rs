//! Grouping per-recipient events into one notification per message and
//! kind. Pure: every method takes `now`, so the rule is tested with a
//! virtual clock.
//!
//! # The rule
//!
//! The queue engine emits one event per recipient, as it records each
//! outcome of a finished job, one store write apart. Events are collected
//! per (message, [`Kind`]); a group is closed, and becomes one
//! notification, once it has been **quiet** for [`Batcher::quiet`] (no new
//! event for it), or at the latest [`Batcher::max_hold`] after its first
//! event. So:
//!
//! * the recipients of one job (one transaction to one destination) always
//!   end up in one notification: their events follow each other within
//!   milliseconds;
//! * recipients of the same message in other jobs (other destinations)
//!   that finish within the quiet time join the same notification too;
//! * a recipient whose outcome comes later (a retry an hour later) gets a
//!   notification of its own, as it is a separate event (RFC 3464 allows
//!   several notifications about one message);
//! * a recipient reported twice within one group (not expected) is
//!   reported once, with its latest event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferrymail_schedule::Event;
use ferrymail_spool::MessageId;

use crate::notify::Kind;

/// Names one group: the message and the kind of notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    /// The message the events are about.
    pub message: MessageId,
    /// Failure, delay or success.
    pub kind: Kind,
}

/// A closed group: the events one notification reports, ordered by
/// recipient index.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Message and kind.
    pub key: BatchKey,
    /// One event per recipient.
    pub events: Vec<Event>,
}

struct Open {
    events: Vec<Event>,
    first: Instant,
    last: Instant,
    seq: u64,
}

/// Puts `event` into a group's `events` in place of an earlier one of the
/// same recipient: a notification reports each recipient once, with its
/// latest outcome.
pub(crate) fn put(events: &mut Vec<Event>, event: Event) {
    events.retain(|e| e.rcpt != event.rcpt);
    events.push(event);
}

/// The groups being collected.
pub struct Batcher {
    /// How long a group waits for another event before it is closed.
    pub quiet: Duration,
    /// The longest a group stays open, however busy.
    pub max_hold: Duration,
    open: HashMap<BatchKey, Open>,
    seq: u64,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(quiet: Duration, max_hold: Duration) -> Batcher {
        Batcher {
            quiet,
            max_hold,
            open: HashMap::new(),
            seq: 0,
        }
    }

    /// Adds an event to the group of its message and `kind`.
    pub fn add(&mut self, kind: Kind, event: Event, now: Instant) {
        let key = BatchKey {
            message: event.envelope.id,
            kind,
        };
        self.seq += 1;
        let seq = self.seq;
        let open = self.open.entry(key).or_insert_with(|| Open {
            events: Vec::new(),
            first: now,
            last: now,
            seq,
        });
        open.last = now;
        put(&mut open.events, event);
    }

    /// Takes recipient `rcpt` out of the open group `key`, dropping the
    /// group (no notification) when it was its last: a final outcome makes
    /// a delay report about it wrong.
    pub fn forget(&mut self, key: BatchKey, rcpt: u32) {
        if let Some(open) = self.open.get_mut(&key) {
            open.events.retain(|e| e.rcpt != rcpt);
            if open.events.is_empty() {
                self.open.remove(&key);
            }
        }
    }

    /// The recipients of every open group, by entry: the notices this
    /// node holds and has not reported yet.
    pub fn held(&self) -> impl Iterator<Item = ferrymail_spool::EntryKey> + '_ {
        self.open
            .values()
            .flat_map(|o| o.events.iter().map(Event::key))
    }

    /// Groups being collected.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when nothing is being collected.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn due_at(&self, o: &Open) -> Instant {
        (o.last + self.quiet).min(o.first + self.max_hold)
    }

    /// When the next group closes, if any is open.
    pub fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|o| self.due_at(o)).min()
    }

    /// Closes and returns the groups due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Batch> {
        let due: Vec<BatchKey> = self
            .open
            .iter()
            .filter(|(_, o)| self.due_at(o) <= now)
            .map(|(k, _)| *k)
            .collect();
        self.take(due)
    }

    /// Closes and returns every group (at shutdown), oldest first.
    pub fn drain(&mut self) -> Vec<Batch> {
        let all: Vec<BatchKey> = self.open.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, keys: Vec<BatchKey>) -> Vec<Batch> {
        let mut out: Vec<(u64, Batch)> = keys
            .into_iter()
            .filter_map(|k| self.open.remove(&k).map(|o| (k, o)))
            .map(|(key, mut o)| {
                o.events.sort_by_key(|e| e.rcpt);
                (
                    o.seq,
                    Batch {
                        key,
                        events: o.events,
                    },
                )
            })
            .collect();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymail_schedule::EventKind;
    use ferrymail_spool::conformance::sample_envelope;
    use std::sync::Arc;

    fn event(env: &Arc<ferrymail_spool::Envelope>, rcpt: u32) -> Event {
        Event {
            envelope: env.clone(),
            rcpt,
            queue: "default".into(),
            kind: EventKind::Failed {
                reason: "x".into(),
                reply: None,
            },
            attempt_at: 0,
            attempts: 1,
            remote: None,
            contents: None,
        }
    }

    const Q: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(10);

    /// A job's recipients, milliseconds apart, close as one group once
    /// quiet; another message and another kind stay separate.
    #[test]
    fn groups_per_message_and_kind() {
        let a = Arc::new(sample_envelope(1, 3));
        let b = Arc::new(sample_envelope(2, 1));
        let t = Instant::now();
        let mut bt = Batcher::new(Q, MAX);
        bt.add(Kind::Failure, event(&a, 2), t);
        bt.add(Kind::Failure, event(&a, 0), t + Duration::from_millis(5));
        bt.add(Kind::Delay, event(&a, 1), t + Duration::from_millis(6));
        bt.add(Kind::Failure, event(&b, 0), t + Duration::from_millis(7));
        assert_eq!(bt.len(), 3);
        assert_eq!(bt.next_due(), Some(t + Duration::from_millis(1005)));
        assert!(bt.take_due(t + Duration::from_millis(1004)).is_empty());
        let closed = bt.take_due(t + Duration::from_millis(1007));
        let got: Vec<(MessageId, Kind, Vec<u32>)> = closed
            .iter()
            .map(|b| {
                (
                    b.key.message,
                    b.key.kind,
                    b.events.iter().map(|e| e.rcpt).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (a.id, Kind::Failure, vec![0, 2]),
                (a.id, Kind::Delay, vec![1]),
                (b.id, Kind::Failure, vec![0]),
            ]
        );
        assert!(bt.is_empty());
        assert_eq!(bt.next_due(), None);
    }

    /// Each event restarts the quiet time, but a group never stays open
    /// longer than `max_hold`; a later event opens a new group.
    #[test]
    fn quiet_time_and_max_hold() {
        let a = Arc::new(sample_envelope(1, 30));
        let t = Instant::now();
        let mut bt = Batcher::new(Q, MAX);
        let mut closed = Vec::new();
        for i in 0..20u32 {
            let now = t + Duration::from_millis(600) * i;
            closed.extend(bt.take_due(now));
            bt.add(Kind::Failure, event(&a, i), now);
            if i == 1 {
                assert_eq!(bt.next_due(), Some(now + Q), "quiet time restarts");
            }
        }
        // Quiet never reached; max hold closed the first group at t+10s.
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].events.len(), 17, "events up to t+9.6s");
        assert_eq!(bt.len(), 1, "the later events form a new group");
        let rest = bt.drain();
        assert_eq!(rest[0].events.len(), 3);
    }

    /// A recipient reported twice in one group appears once, latest wins.
    #[test]
    fn one_block_per_recipient() {
        let a = Arc::new(sample_envelope(1, 2));
        let t = Instant::now();
        let mut bt = Batcher::new(Q, MAX);
        bt.add(Kind::Failure, event(&a, 1), t);
        let mut second = event(&a, 1);
        second.attempts = 7;
        bt.add(Kind::Failure, second, t);
        let b = bt.drain();
        assert_eq!(b[0].events.len(), 1);
        assert_eq!(b[0].events[0].attempts, 7);
    }
}
