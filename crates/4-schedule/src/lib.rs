//! Schedule: the queue engine. Decides, for every queued recipient, when it is
//! attempted, in which transaction, and what happens after: retry, delay
//! notice, expiry.
//!
//! Two layers, as in Postfix's queue manager:
//!
//! * [`core`]: the scheduling core. A compact in-memory index of queue
//!   entries (virtual queues, pending and deferred lanes, priority,
//!   per-destination ready queues with slow start and dead-destination
//!   suspension, ETRN). Pure: no I/O, no clock reads; every method takes
//!   `now`. Its tests drive it with a virtual clock.
//! * [`policy`]: schedules (`retry`, `notify`, `expire`, `max-attempts`),
//!   also pure: from an attempt's outcome to "complete with this event" or
//!   "defer until then".
//! * [`manager`]: the async driver, [`QueueManager`]. Rebuilds the index from
//!   the data store at start-up, takes newly accepted entries, ETRN and
//!   management requests, sleeps until the next due time, claims entries
//!   with a lease, reading their envelope (and contents) in the same store
//!   operation ([`ferrymail_spool::DataStore::claim_job`]), hands jobs to
//!   a [`ferrymail_deliver::Transport`], records outcomes in the store and
//!   emits [`Event`]s for delivery status notifications.
//! * [`notify`]: whether an outcome owes the sender a notification (RFC
//!   3461 §4.1, §6), the one copy of that rule.
//!
//! # Invariants
//!
//! * The scheduler never reads a message body for scheduling; contents are
//!   loaded only to hand a job to the transport.
//! * Held entries are never delivered: they are not indexed, and
//!   `claim_keys` (and `claim_job`) refuse them atomically in the store
//!   even if the index is behind an operator's hold.
//! * Exactly one node delivers an entry at a time: the store's lease.
//! * A slow or suspended destination holds at most its own ready queue's
//!   slots (see [`core`]).
//! * **Notice owed**: an outcome that owes a notification is recorded
//!   together with the owed notice, in one store write (`complete` with a
//!   notice, `defer` with one); restart recovery hands owed notices to the
//!   DSN layer, which discharges them once the notification is queued.

#![warn(missing_docs)]

pub mod core;
pub mod event;
pub mod manager;
mod names;
pub mod notify;
pub mod policy;
pub mod rng;

pub use crate::core::{
    CoreSettings, Dispatch, Health, JobId, JobReport, Mode, Next, Notice, Origin, Placement,
    Scheduler, Stats, Target, TargetError,
};
pub use event::{Event, EventKind};
pub use manager::{ManagerSettings, QueueCounters, QueueError, QueueHandle, QueueManager, Running};
pub use notify::{Kind, owes, wanted};

pub use policy::{Decision, Policy};
