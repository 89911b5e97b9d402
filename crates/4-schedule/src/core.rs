//! The scheduling core: an in-memory index of queue entries that decides
//! which deliveries start when. Pure: no I/O, no clock reads, no sleeping.
//! Every method that depends on time takes `now`, and randomness comes from a
//! seeded generator, so the whole behaviour is unit-tested with an explicit
//! virtual clock (this is how issue 3's "tests with paused time" are met: the
//! tests *are* the clock). The async driver ([`crate::manager`]) feeds it and
//! carries out what it decides.
//!
//! # Shape of the index
//!
//! ```text
//!  virtual queue ── ready queue (queue × route × destination) ── pending lane
//!   (concurrency,    (slow-start window, dead-destination state)  retry lane
//!    rate)                      ▲
//!                               │ due
//!  timeline (every waiting entry, by due time) ─┘
//! ```
//!
//! * A **waiting** entry (not due yet) sits in one global timeline ordered by
//!   due time: the deferred lane "ordered by due time" of the issue.
//! * A **ready** entry sits in one of the two lanes of its per-destination
//!   ready queue: *pending* (never attempted) or *retry* (deferred and due),
//!   each ordered by priority.
//! * An **in-flight** entry is in no structure; its job remembers it.
//! * **Held** entries are not indexed at all: they can never be dispatched.
//!   Releasing one re-reads it from the store.
//!
//! Per entry the index keeps 40 bytes (message id, due time, recipient index,
//! weight, ready-queue id, domain id, sibling link, state) plus one B-tree
//! position and its share of the message map: about 110 bytes all-in
//! (107 measured by `examples/index_memory.rs` for a million deferred
//! recipients over 20,000 domains). Queue, route and domain names are
//! interned ids; envelopes and contents are never kept.
//!
//! # Strategies
//!
//! Named and documented where they are implemented, as Postfix documents its
//! queue manager:
//!
//! * **Age-weighted priority** ([`AGE_STEP_MS`]): order within a lane.
//! * **2:1 fresh-first alternation** ([`FRESH_PER_RETRY`]): lane selection.
//! * **Per-destination slow start** ([`SLOW_START_INITIAL`]) and
//!   **dead-destination suspension with a single probe**, its backlog
//!   deferred in batches ([`SUSPENDED_DRAIN_MAX`]).
//! * **Destination round robin with headroom**: isolation between
//!   destinations inside one virtual queue.
//! * **Token-bucket queue rate**: `rate = "500/1s"`, per node or, with a
//!   shared store, for the whole cluster (see `Bucket`).
//! * **Per-destination rate**: `destination.rate`, a bucket per ready
//!   queue (per node). An empty bucket takes its destination off the ring
//!   until the next token (`rate_wakes`), so the others go on; a ready
//!   queue with a bucket that is not full again is not freed, so a trickle
//!   of mail does not get a fresh burst with every message.
//! * **Restart spreading** ([`RESTART_SPREAD_MS`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use ferrymail_config::{DEFAULT_QUEUE, DestinationLimits, RouteKind, VirtualQueue};
use ferrymail_spool::{EntryKey, Lane, MessageId, NodeId, QueueEntry, UnixMillis};

use crate::names::{IdBuild, Interner};
use crate::policy::JITTER;
use crate::rng::Rng;

/// **Age-weighted priority.** Within a lane, entries are served by effective
/// weight, highest first: `weight + age / AGE_STEP_MS`, where `weight` is the
/// router's (MT-PRIORITY × 1000 plus `queue.priority`). Age raises every
/// entry's effective weight at the same rate, so a low-priority entry
/// eventually outranks any stream of fresh high-priority mail: nothing
/// starves. One MT-PRIORITY level (1000) is worth 10,000 s (2.8 h) of waiting.
///
/// The order is kept with a time-invariant key: `weight + (now − arrival) /
/// step` orders exactly as `weight·step − arrival`, so the sort key
/// `arrival − weight·step` (ascending) never needs recomputing as time
/// passes. Arrival is the millisecond encoded in the message id.
pub const AGE_STEP_MS: i64 = 10_000;

/// **2:1 fresh-first alternation.** When a destination has both fresh mail
/// (pending lane) and due retries (retry lane) ready, it takes
/// `FRESH_PER_RETRY` pending jobs, then one retry, and so on. Fresh mail
/// therefore gets at least two thirds of a busy destination's slots and
/// never waits behind a backlog of retries, while retries get at least a
/// third and never starve. When only one lane has work it takes all of it;
/// a retry arriving after a run of fresh mail is served next.
pub const FRESH_PER_RETRY: u8 = 2;

/// **Per-destination slow start.** A new (or recovered) destination may have
/// this many deliveries in flight; each job the destination answers (any
/// reply, even a 4xx or 5xx: the host is alive) raises the window by one up
/// to `destination.concurrency`; each connection-level failure (no reply, or
/// a 421 greeting) halves it, never below one. Like TCP's slow start and
/// Postfix's destination concurrency feedback, it stops a burst of new mail
/// from opening dozens of connections to a host that turns out to be slow.
///
/// **Dead-destination suspension.** After `destination.failure-limit`
/// consecutive connection-level failures the destination is suspended for
/// `destination.suspend`. While suspended it holds no slot: its ready entries
/// are deferred at once without a connection ("delivery temporarily
/// suspended: `<last error>`", as Postfix does for dead sites; this counts as
/// an attempt and follows the schedule's notify and expire rules), with their
/// next try no earlier than the end of the suspension. Then exactly one
/// probe job is let through; an answer resumes the destination at this
/// window, a failure suspends it again.
pub const SLOW_START_INITIAL: u32 = 2;

/// **Suspension deferrals in small batches.** A suspended destination's
/// ready entries are deferred without a connection, but each deferral is
/// still a job: a claim and a write to the store. At most this many are in
/// flight per destination; the rest follow as they finish. Without the
/// bound a dead destination with a large backlog (after a restart, say)
/// would start tens of thousands of jobs at once, and their store writes
/// would hold up every other destination's.
pub const SUSPENDED_DRAIN_MAX: u32 = 32;

/// **Restart spreading.** Entries recovered at start-up that are overdue
/// retries are not all made due at once: each gets a uniform random due time
/// within this many milliseconds, so a restart after an outage does not fire
/// the whole backlog in the first second. Overdue first attempts (pending
/// lane) stay due at once: fresh mail first.
pub const RESTART_SPREAD_MS: u64 = 60_000;

/// Most recipients of one message in one job: one SMTP transaction. RFC 5321
/// §4.5.3.1.8 obliges servers to accept at least 100.
pub const MAX_RCPTS_PER_JOB: usize = 100;

/// How often (virtual milliseconds) idle destination state is swept away.
const SWEEP_EVERY_MS: u64 = 60_000;

/// No slot; the end of a list.
const NIL: u32 = u32::MAX;

/// Where an indexed entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The slot is unused.
    Free,
    /// Not due yet: in the timeline.
    Waiting,
    /// Due, never attempted: in its ready queue's pending lane.
    Pending,
    /// Due retry: in its ready queue's retry lane.
    Retry,
    /// Part of a job being carried out.
    InFlight,
}

/// One indexed recipient. 40 bytes: this is what a million deferred
/// recipients cost, so nothing else goes here.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The message; its id also encodes the arrival time.
    message: MessageId,
    /// When the entry may next be attempted.
    due: UnixMillis,
    /// The recipient index.
    rcpt: u32,
    /// Priority weight from the router.
    weight: i32,
    /// The ready queue (queue × route × destination).
    rq: u32,
    /// Interned recipient domain (for ETRN and the job).
    domain: u32,
    /// Next entry of the same message (a ring), or the free list.
    next: u32,
    /// Where it is.
    state: State,
    /// In the deferred lane (attempted before).
    deferred: bool,
    /// Changed in the store while in flight: re-read it when the job ends.
    dirty: bool,
}

impl Slot {
    const EMPTY: Slot = Slot {
        message: MessageId(0),
        due: 0,
        rcpt: 0,
        weight: 0,
        rq: NIL,
        domain: NIL,
        next: NIL,
        state: State::Free,
        deferred: false,
        dirty: false,
    };

    fn key(&self) -> EntryKey {
        EntryKey {
            message: self.message,
            rcpt: self.rcpt,
        }
    }

    /// The time-invariant priority key (ascending = served first); see
    /// [`AGE_STEP_MS`].
    fn prio(&self) -> i64 {
        self.message.timestamp() as i64 - i64::from(self.weight) * AGE_STEP_MS
    }
}

/// A per-destination ready queue inside one virtual queue.
#[derive(Debug)]
struct ReadyQueue {
    /// The virtual queue.
    queue: u32,
    /// Interned route id.
    route: u32,
    /// Interned destination key (domain, or `route:<id>` for relays).
    dest: u32,
    /// Entries referring to this ready queue, in any state.
    refs: u32,
    /// Ready first attempts, by priority key.
    pending: BTreeSet<(i64, u32)>,
    /// Ready retries, by priority key.
    retry: BTreeSet<(i64, u32)>,
    /// Delivery jobs in flight (connections).
    in_flight: u32,
    /// Suspension deferrals in flight (no connection; see
    /// [`SUSPENDED_DRAIN_MAX`]).
    draining: u32,
    /// Slow-start window.
    window: u32,
    /// Consecutive connection-level failures.
    failures: u32,
    /// Suspended until then (dead destination).
    suspended_until: Option<UnixMillis>,
    /// The single probe job after a suspension is out (or due).
    probing: bool,
    /// Pending jobs taken in a row while retries waited (lane alternation).
    fresh_run: u8,
    /// In its virtual queue's round-robin ring.
    in_ring: bool,
    /// The last connection-level error, for suspension deferrals.
    last_error: Option<String>,
    /// `destination.rate`: jobs started per period (per node).
    bucket: Option<Bucket>,
    /// When the bucket has its next token, while it is what holds this
    /// destination back (then it is on [`Scheduler::rate_wakes`]).
    rate_wake: Option<UnixMillis>,
}

impl ReadyQueue {
    fn has_ready(&self) -> bool {
        !self.pending.is_empty() || !self.retry.is_empty()
    }
}

/// A token bucket: `count` tokens per `period`, starting full.
///
/// **Cluster-wide rate.** When the queue's rate is shared by every node of
/// a cluster ([`CoreSettings::shared_rates`]), the bucket does not refill
/// by itself: the one bucket is in the shared store, the driver takes
/// tokens from it in small batches ([`Scheduler::token_requests`],
/// [`Scheduler::grant`]) and this bucket only holds what was granted.
#[derive(Clone, Debug)]
struct Bucket {
    /// The configured rate (what the driver asks the store for).
    rate: ferrymail_config::Rate,
    /// Tokens come only from [`Scheduler::grant`].
    shared: bool,
    /// Tokens are missing and the driver should ask for more.
    wanted: bool,
    /// Most tokens held (the burst).
    capacity: f64,
    /// Tokens added per millisecond.
    per_ms: f64,
    /// Tokens now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: UnixMillis,
}

impl Bucket {
    fn new(rate: ferrymail_config::Rate, shared: bool) -> Bucket {
        let capacity = rate.count as f64;
        let period = (rate.period.as_millis() as f64).max(1.0);
        Bucket {
            rate,
            shared,
            wanted: false,
            capacity,
            per_ms: capacity / period,
            tokens: if shared { 0.0 } else { capacity },
            last: 0,
        }
    }

    fn refill(&mut self, now: UnixMillis) {
        if self.shared {
            return;
        }
        if self.last == 0 {
            self.last = now;
        }
        let elapsed = now.saturating_sub(self.last) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes a token if one is there.
    fn try_take(&mut self, now: UnixMillis) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            self.wanted = self.shared;
            false
        }
    }

    /// Whether the bucket is full again at `now` (it then holds nothing a
    /// fresh one would not).
    fn full_at(&self, now: UnixMillis) -> bool {
        let elapsed = now.saturating_sub(self.last) as f64;
        self.tokens + elapsed * self.per_ms >= self.capacity - 1e-9
    }

    /// When the next whole token will be there.
    fn next_at(&self) -> UnixMillis {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + (missing / self.per_ms).ceil().max(1.0) as u64
    }
}

/// A virtual queue as the index keeps it.
#[derive(Debug)]
struct VQueue {
    /// Its name.
    name: String,
    /// Created on demand from the strategy (not configured).
    dynamic: bool,
    /// Jobs in flight at most.
    concurrency: u32,
    /// Per-destination limits.
    dest: DestinationLimits,
    /// The rate limit, if any.
    bucket: Option<Bucket>,
    /// Jobs in flight now.
    in_flight: u32,
    /// Ready queues with work they may start, served round robin.
    ring: VecDeque<u32>,
    /// In the scheduler's list of queues with a non-empty ring.
    active: bool,
    /// Ready queues belonging to it.
    rqs: u32,
    /// When the rate limit next allows a job, while it is what blocks.
    rate_wake: Option<UnixMillis>,
}

impl VQueue {
    /// Takes `q`'s limits (a reload): concurrency, destination limits, and
    /// a new rate bucket only if the rate changed (so a reload that keeps
    /// it does not hand out a fresh burst).
    fn set_limits(&mut self, q: &VirtualQueue, shared: bool) {
        self.concurrency = q.concurrency.clamp(1, u32::MAX as usize) as u32;
        self.dest = q.destination.clone();
        if self.bucket.as_ref().map(|b| b.rate) != q.rate {
            self.bucket = q.rate.map(|r| Bucket::new(r, shared));
            self.rate_wake = None;
        }
    }

    /// **Destination round robin with headroom.** A destination holds at most
    /// `destination.concurrency` of its queue's slots and never all of them:
    /// when that setting is not below the queue's `concurrency`, it is
    /// capped at `concurrency − 1`, so one slow destination always leaves at
    /// least one slot to the others, and the round robin over destinations
    /// hands those slots out one job at a time. A suspended destination holds
    /// none. (Several slow destinations together can still hold most of a
    /// queue; per-domain queues, `'dom-' + rcpt_domain`, decouple them fully.)
    fn dest_limit(&self) -> u32 {
        let headroom = if self.concurrency > 1 {
            self.concurrency - 1
        } else {
            1
        };
        (self.dest.concurrency.min(u32::MAX as usize) as u32)
            .min(headroom)
            .max(1)
    }
}

/// What the core needs from the configuration.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// This node: its own leases (from before a restart) count as free.
    pub node: NodeId,
    /// `[queue.virtual.<name>]`; `default` is added if missing.
    pub queues: BTreeMap<String, VirtualQueue>,
    /// `queue.max-dynamic-queues`.
    pub max_dynamic_queues: usize,
    /// Route ids of type `relay`: their destination is the route, not the
    /// recipient domain.
    pub relay_routes: BTreeSet<String>,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// Virtual queue rates hold for the whole cluster: tokens are granted
    /// by the driver from the shared store instead of refilling here.
    pub shared_rates: bool,
}

impl CoreSettings {
    /// The settings of a loaded `[queue]` configuration.
    pub fn from_config(q: &ferrymail_config::Queue, node: NodeId, seed: u64) -> CoreSettings {
        CoreSettings {
            node,
            queues: q.virtual_queues.clone(),
            max_dynamic_queues: q.max_dynamic_queues,
            relay_routes: q
                .routes
                .iter()
                .filter(|(_, r)| matches!(r.kind, RouteKind::Relay { .. }))
                .map(|(id, _)| id.clone())
                .collect(),
            seed,
            shared_rates: false,
        }
    }
}

/// Identifies one job handed out by [`Scheduler::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// Where an entry handed to [`Scheduler::insert`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Just accepted.
    New,
    /// Read back at start-up: overdue retries are spread
    /// ([`RESTART_SPREAD_MS`]).
    Recovered,
    /// Re-read after a change (operator action, lost lease).
    Refresh,
}

/// Where [`Scheduler::insert`] put an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Due: in a ready lane.
    Ready,
    /// Not due yet: in the timeline.
    Waiting,
    /// Held: not indexed, never dispatched.
    Held,
    /// Already in flight: it will be re-read from the store when its job ends.
    InFlight,
}

/// How a job is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver it.
    Deliver,
    /// Its destination is suspended: defer it without a connection, with
    /// this reason, not before `until`.
    Suspended {
        /// The reason to record (last error).
        reason: String,
        /// The end of the suspension.
        until: UnixMillis,
    },
}

/// One job: recipients of one message that share virtual queue, route and
/// destination (and domain), for one SMTP transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// Report its end with [`Scheduler::finish`].
    pub job: JobId,
    /// The virtual queue.
    pub queue: String,
    /// The route id.
    pub route: String,
    /// The recipients' domain (lower case).
    pub domain: String,
    /// The message.
    pub message: MessageId,
    /// Recipient indices, ascending.
    pub rcpts: Vec<u32>,
    /// Deliver, or defer because the destination is suspended.
    pub mode: Mode,
    /// The jitter factor for this job's retries, within ±[`JITTER`].
    pub jitter: f64,
}

impl Dispatch {
    /// The entry keys of the job.
    pub fn keys(&self) -> Vec<EntryKey> {
        self.rcpts
            .iter()
            .map(|&rcpt| EntryKey {
                message: self.message,
                rcpt,
            })
            .collect()
    }
}

/// What a finished job says about its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The next hop answered (any reply): grow the window.
    Answered,
    /// No connection or no usable answer (refused, timed out, TLS failure,
    /// DNS failure, 421 greeting): shrink the window; maybe suspend.
    ConnectionFailed {
        /// The error, for suspension deferrals.
        reason: String,
    },
    /// Nothing was attempted (nothing claimed, or a suspension deferral).
    NotAttempted,
}

/// What became of one entry of a finished job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Removed from the store (delivered, failed, expired).
    Gone,
    /// Deferred in the store until `due`.
    Retry {
        /// The stored due time.
        due: UnixMillis,
    },
    /// Unknown (not claimed, lease lost, store error): re-read it.
    Reload,
}

/// The end of a job, as [`Scheduler::finish`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobReport {
    /// About the destination.
    pub health: Health,
    /// About each entry; entries not listed count as [`Next::Reload`].
    pub next: Vec<(EntryKey, Next)>,
}

/// What an ETRN (RFC 1985) or `queue flush` asks to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Everything (`queue flush` without a domain).
    All,
    /// `ETRN example.org`: recipients at exactly this domain.
    Domain(String),
    /// `ETRN @example.org`: recipients at this domain and its subdomains.
    Subdomains(String),
    /// `ETRN #queue`: one virtual queue.
    Queue(String),
}

/// Why an ETRN argument was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing after the prefix, or no argument.
    #[error("no node name given")]
    Empty,
    /// Not a domain name or queue name.
    #[error("'{0}' is not a domain or queue name")]
    Invalid(String),
}

impl Target {
    /// Parses an ETRN argument (RFC 1985 §3): `domain`, `@domain` (the
    /// domain and its subdomains) or `#queue` (a virtual queue, the
    /// "queue name" form).
    pub fn parse(arg: &str) -> Result<Target, TargetError> {
        let arg = arg.trim();
        if let Some(q) = arg.strip_prefix('#') {
            if q.is_empty() {
                return Err(TargetError::Empty);
            }
            if !ferrymail_config::is_valid_queue_name(q) {
                return Err(TargetError::Invalid(arg.to_string()));
            }
            return Ok(Target::Queue(q.to_string()));
        }
        let (sub, d) = match arg.strip_prefix('@') {
            Some(d) => (true, d),
            None => (false, arg),
        };
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() {
            return Err(TargetError::Empty);
        }
        let ok = d.len() <= 255
            && !d.starts_with('.')
            && d.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
        if !ok {
            return Err(TargetError::Invalid(arg.to_string()));
        }
        Ok(if sub {
            Target::Subdomains(d)
        } else {
            Target::Domain(d)
        })
    }

    /// The ETRN argument [`Target::parse`] reads back as this target, and
    /// `""` for [`Target::All`]: how a flush is passed on to other nodes.
    pub fn argument(&self) -> String {
        match self {
            Target::All => String::new(),
            Target::Domain(d) => d.clone(),
            Target::Subdomains(d) => format!("@{d}"),
            Target::Queue(q) => format!("#{q}"),
        }
    }
}

/// Something the driver should log; the core keeps no logger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// An entry named a queue beyond `max-dynamic-queues`; it and later ones
    /// go to `default`. Said once per process.
    DynamicQueueCap {
        /// The queue name refused.
        name: String,
        /// The cap.
        cap: usize,
    },
    /// An entry named an invalid queue; it goes to `default`. Said once per
    /// name (for the first 1024 names).
    InvalidQueueName {
        /// The name.
        name: String,
    },
    /// A destination was suspended.
    Suspended {
        /// Virtual queue.
        queue: String,
        /// Destination key.
        destination: String,
        /// Until then.
        until: UnixMillis,
        /// The last error.
        reason: String,
    },
    /// A suspended destination answered its probe.
    Resumed {
        /// Virtual queue.
        queue: String,
        /// Destination key.
        destination: String,
    },
}

/// Counters for logs, tests and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Indexed entries (not held).
    pub entries: usize,
    /// Of which waiting for their due time.
    pub waiting: usize,
    /// Of which ready in a lane.
    pub ready: usize,
    /// Of which in flight.
    pub in_flight: usize,
    /// Jobs in flight (delivery and suspension jobs).
    pub jobs: usize,
    /// Virtual queues (configured and dynamic).
    pub queues: usize,
    /// Of which dynamic.
    pub dynamic_queues: usize,
    /// Per-destination ready queues.
    pub destinations: usize,
    /// Of which suspended as dead, or waiting for the probe that ends a
    /// suspension: a mail server that stopped answering.
    pub suspended: usize,
    /// Indexed entries by virtual queue: (name, waiting, ready, in flight),
    /// by name; queues with no entries are left out.
    pub by_queue: Vec<(String, usize, usize, usize)>,
}

/// Where one entry is, for tests and `queue show`-style introspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// In the timeline until `due`.
    Waiting {
        /// Due time.
        due: UnixMillis,
    },
    /// Ready in a lane.
    Ready {
        /// Which lane.
        lane: Lane,
    },
    /// In a job.
    InFlight,
}

/// The state of one per-destination ready queue, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationState {
    /// Jobs in flight.
    pub in_flight: u32,
    /// Slow-start window.
    pub window: u32,
    /// The effective limit now (window, capped; 1 while probing).
    pub limit: u32,
    /// Consecutive connection-level failures.
    pub failures: u32,
    /// Suspended until.
    pub suspended_until: Option<UnixMillis>,
    /// Probe job allowed or out.
    pub probing: bool,
    /// Ready entries in the pending lane.
    pub pending: usize,
    /// Ready entries in the retry lane.
    pub retry: usize,
}

/// A job in flight.
#[derive(Debug)]
struct JobInfo {
    /// Its ready queue.
    rq: u32,
    /// Its entries.
    slots: Vec<u32>,
    /// A delivery (holds a slot), not a suspension deferral.
    deliver: bool,
}

/// The scheduling core. See the module documentation.
pub struct Scheduler {
    /// This node.
    node: NodeId,
    /// Entry slots; indices are stable while an entry is indexed.
    slots: Vec<Slot>,
    /// Head of the free-slot list.
    free: u32,
    /// Slots in use.
    live: usize,
    /// Message → one of its slots (the others follow the sibling ring).
    by_msg: HashMap<MessageId, u32, IdBuild>,
    /// Waiting entries by due time.
    timeline: BTreeSet<(UnixMillis, u32)>,
    /// Ready queues held back by their `destination.rate`, by when their
    /// next token is there.
    rate_wakes: BTreeSet<(UnixMillis, u32)>,
    /// Ready queues; `None` for a free id.
    rqs: Vec<Option<ReadyQueue>>,
    /// Free ready-queue ids.
    rq_free: Vec<u32>,
    /// (queue, route, destination) → ready queue.
    rq_index: HashMap<(u32, u32, u32), u32, IdBuild>,
    /// Virtual queues; `None` for a free id.
    queues: Vec<Option<VQueue>>,
    /// Free queue ids.
    queue_free: Vec<u32>,
    /// Name → virtual queue.
    queue_index: HashMap<String, u32>,
    /// The `default` queue's id.
    default_queue: u32,
    /// Settings for dynamic queues: the `default` queue's limits.
    template: VirtualQueue,
    /// Dynamic queues in existence.
    dynamic: usize,
    /// `max-dynamic-queues`.
    max_dynamic: usize,
    /// Queues whose ring is not empty, in service order.
    active: VecDeque<u32>,
    /// Recipient domains and destination keys.
    names: Interner,
    /// Route ids (never forgotten: few).
    routes: Interner,
    /// Relay route ids.
    relay_routes: BTreeSet<String>,
    /// Queue rates are cluster-wide (see [`Bucket`]).
    shared_rates: bool,
    /// Jobs in flight.
    jobs: HashMap<u64, JobInfo, IdBuild>,
    /// The next job id.
    next_job: u64,
    /// Jitter and spreading.
    rng: Rng,
    /// For the driver to log.
    notices: Vec<Notice>,
    /// Invalid queue names already reported.
    warned_names: HashSet<String>,
    /// The dynamic-queue cap was reported.
    cap_warned: bool,
    /// The last idle-state sweep.
    last_sweep: UnixMillis,
}

impl Scheduler {
    /// An empty index for `settings`.
    pub fn new(settings: CoreSettings) -> Scheduler {
        let mut s = Scheduler {
            node: settings.node,
            slots: Vec::new(),
            free: NIL,
            live: 0,
            by_msg: HashMap::default(),
            timeline: BTreeSet::new(),
            rate_wakes: BTreeSet::new(),
            rqs: Vec::new(),
            rq_free: Vec::new(),
            rq_index: HashMap::default(),
            queues: Vec::new(),
            queue_free: Vec::new(),
            queue_index: HashMap::new(),
            default_queue: 0,
            template: settings
                .queues
                .get(DEFAULT_QUEUE)
                .cloned()
                .unwrap_or_default(),
            dynamic: 0,
            max_dynamic: settings.max_dynamic_queues,
            active: VecDeque::new(),
            names: Interner::default(),
            routes: Interner::default(),
            relay_routes: settings.relay_routes,
            shared_rates: settings.shared_rates,
            jobs: HashMap::default(),
            next_job: 1,
            rng: Rng::new(settings.seed),
            notices: Vec::new(),
            warned_names: HashSet::new(),
            cap_warned: false,
            last_sweep: 0,
        };
        let mut queues = settings.queues;
        queues.entry(DEFAULT_QUEUE.to_string()).or_default();
        for (name, q) in &queues {
            let id = s.add_queue(name, q, false);
            if name == DEFAULT_QUEUE {
                s.default_queue = id;
            }
        }
        s
    }

    // ------------------------------------------------------------ queues

    fn add_queue(&mut self, name: &str, q: &VirtualQueue, dynamic: bool) -> u32 {
        let v = VQueue {
            name: name.to_string(),
            dynamic,
            concurrency: q.concurrency.clamp(1, u32::MAX as usize) as u32,
            dest: q.destination.clone(),
            bucket: q.rate.map(|r| Bucket::new(r, self.shared_rates)),
            in_flight: 0,
            ring: VecDeque::new(),
            active: false,
            rqs: 0,
            rate_wake: None,
        };
        let id = match self.queue_free.pop() {
            Some(id) => {
                self.queues[id as usize] = Some(v);
                id
            }
            None => {
                self.queues.push(Some(v));
                (self.queues.len() - 1) as u32
            }
        };
        self.queue_index.insert(name.to_string(), id);
        id
    }

    fn q(&self, id: u32) -> &VQueue {
        self.queues[id as usize]
            .as_ref()
            .expect("live virtual queue id")
    }

    fn q_mut(&mut self, id: u32) -> &mut VQueue {
        self.queues[id as usize]
            .as_mut()
            .expect("live virtual queue id")
    }

    /// The virtual queue for an entry's queue name: configured, dynamic
    /// (created now if under the cap), or `default`.
    fn queue_for(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.queue_index.get(name) {
            return id;
        }
        if !ferrymail_config::is_valid_queue_name(name) {
            if self.warned_names.len() < 1024 && self.warned_names.insert(name.to_string()) {
                self.notices.push(Notice::InvalidQueueName {
                    name: name.to_string(),
                });
            }
            return self.default_queue;
        }
        if self.dynamic >= self.max_dynamic {
            if !self.cap_warned {
                self.cap_warned = true;
                self.notices.push(Notice::DynamicQueueCap {
                    name: name.to_string(),
                    cap: self.max_dynamic,
                });
            }
            return self.default_queue;
        }
        let mut settings = self.template.clone();
        settings.schedule = None;
        self.dynamic += 1;
        self.add_queue(name, &settings, true)
    }

    /// Takes up reloaded queue settings (`[queue.virtual.*]`,
    /// `max-dynamic-queues`, which routes are relays) without touching the
    /// index: every entry stays where it is, jobs in flight finish, and the
    /// new limits apply from the next dispatch. A queue added to the
    /// configuration is created; a dynamic queue that is now configured
    /// takes its configured limits; a configured queue that is no longer
    /// configured keeps its mail as a dynamic queue, and goes away once
    /// empty; every dynamic queue takes the new `default` queue's limits. `node`, `seed` and
    /// `shared_rates` belong to the running node and are not changed.
    pub fn reconfigure(&mut self, settings: CoreSettings) {
        let mut queues = settings.queues;
        queues.entry(DEFAULT_QUEUE.to_string()).or_default();
        self.template = queues[DEFAULT_QUEUE].clone();
        self.max_dynamic = settings.max_dynamic_queues;
        self.relay_routes = settings.relay_routes;
        for (name, q) in &queues {
            match self.queue_index.get(name).copied() {
                Some(id) => {
                    let shared = self.shared_rates;
                    let v = self.q_mut(id);
                    v.set_limits(q, shared);
                    if std::mem::replace(&mut v.dynamic, false) {
                        self.dynamic -= 1;
                    }
                }
                None => {
                    self.add_queue(name, q, false);
                }
            }
        }
        let dropped: Vec<u32> = self
            .queue_index
            .iter()
            .filter(|(name, _)| !queues.contains_key(*name))
            .map(|(_, &id)| id)
            .collect();
        let template = self.template.clone();
        let shared = self.shared_rates;
        for id in dropped {
            // Dynamic queues (those just dropped from the file and those
            // the strategy made) take the `default` queue's limits as they
            // are now.
            let v = self.q_mut(id);
            v.set_limits(&template, shared);
            if !std::mem::replace(&mut v.dynamic, true) {
                self.dynamic += 1;
                self.maybe_free_queue(id);
            }
        }
        self.default_queue = self.queue_index[DEFAULT_QUEUE];
        // A destination waiting for its `destination.rate` token waits no
        // longer than the new rate says (or at all, if it was removed).
        for id in 0..self.rqs.len() as u32 {
            if let Some(rq) = self.rqs[id as usize].as_mut()
                && rq.rate_wake.take().is_some()
            {
                self.enqueue_rq(id);
            }
        }
    }

    fn maybe_free_queue(&mut self, id: u32) {
        let q = self.q(id);
        if !q.dynamic || q.rqs > 0 || q.in_flight > 0 {
            return;
        }
        let q = self.queues[id as usize].take().expect("live queue");
        self.queue_index.remove(&q.name);
        if q.active {
            self.active.retain(|&a| a != id);
        }
        self.queue_free.push(id);
        self.dynamic -= 1;
    }

    fn activate(&mut self, qid: u32) {
        let q = self.q_mut(qid);
        if !q.active {
            q.active = true;
            self.active.push_back(qid);
        }
    }

    // ------------------------------------------------------------ ready queues

    fn rq(&self, id: u32) -> &ReadyQueue {
        self.rqs[id as usize].as_ref().expect("live ready queue id")
    }

    fn rq_mut(&mut self, id: u32) -> &mut ReadyQueue {
        self.rqs[id as usize].as_mut().expect("live ready queue id")
    }

    fn rq_for(&mut self, qid: u32, route: &str, domain: &str) -> u32 {
        let route_id = match self.routes.get(route) {
            Some(id) => id,
            None => self.routes.acquire(route),
        };
        let relay = self.relay_routes.contains(route);
        let dest = ferrymail_deliver::destination_key(route, domain, relay);
        if let Some(dest_id) = self.names.get(&dest)
            && let Some(&id) = self.rq_index.get(&(qid, route_id, dest_id))
        {
            return id;
        }
        let dest_id = self.names.acquire(&dest);
        let window = SLOW_START_INITIAL.min(self.q(qid).dest_limit());
        let rq = ReadyQueue {
            queue: qid,
            route: route_id,
            dest: dest_id,
            refs: 0,
            pending: BTreeSet::new(),
            retry: BTreeSet::new(),
            in_flight: 0,
            window,
            failures: 0,
            suspended_until: None,
            probing: false,
            draining: 0,
            fresh_run: 0,
            in_ring: false,
            last_error: None,
            bucket: None,
            rate_wake: None,
        };
        let id = match self.rq_free.pop() {
            Some(id) => {
                self.rqs[id as usize] = Some(rq);
                id
            }
            None => {
                self.rqs.push(Some(rq));
                (self.rqs.len() - 1) as u32
            }
        };
        self.rq_index.insert((qid, route_id, dest_id), id);
        self.q_mut(qid).rqs += 1;
        id
    }

    fn suspended_at(rq: &ReadyQueue, now: UnixMillis) -> bool {
        rq.suspended_until.is_some_and(|t| t > now)
    }

    fn maybe_free_rq(&mut self, id: u32, now: UnixMillis) {
        let rq = self.rq(id);
        if rq.refs > 0
            || rq.in_flight > 0
            || Self::suspended_at(rq, now)
            || rq.bucket.as_ref().is_some_and(|b| !b.full_at(now))
        {
            return;
        }
        let rq = self.rqs[id as usize].take().expect("live ready queue");
        self.rq_index.remove(&(rq.queue, rq.route, rq.dest));
        self.names.release(rq.dest);
        self.rq_free.push(id);
        let q = self.q_mut(rq.queue);
        if rq.in_ring {
            q.ring.retain(|&r| r != id);
        }
        q.rqs -= 1;
        self.maybe_free_queue(rq.queue);
    }

    /// The number of jobs a ready queue may have in flight now.
    fn limit(&self, id: u32) -> u32 {
        let rq = self.rq(id);
        if rq.probing {
            1
        } else {
            rq.window.min(self.q(rq.queue).dest_limit()).max(1)
        }
    }

    /// Puts a ready queue in its queue's ring if it has work it may start.
    fn enqueue_rq(&mut self, id: u32) {
        let Some(rq) = self.rqs[id as usize].as_ref() else {
            return;
        };
        if rq.in_ring || !rq.has_ready() {
            return;
        }
        let startable = rq.suspended_until.is_some() || rq.in_flight < self.limit(id);
        if !startable {
            return; // a finishing job re-enqueues it
        }
        let qid = rq.queue;
        self.rq_mut(id).in_ring = true;
        self.q_mut(qid).ring.push_back(id);
        self.activate(qid);
    }

    // ------------------------------------------------------------ slots

    fn alloc(&mut self) -> u32 {
        self.live += 1;
        if self.free != NIL {
            let s = self.free;
            self.free = self.slots[s as usize].next;
            return s;
        }
        self.slots.push(Slot::EMPTY);
        (self.slots.len() - 1) as u32
    }

    fn find(&self, key: EntryKey) -> Option<u32> {
        let &head = self.by_msg.get(&key.message)?;
        let mut s = head;
        loop {
            let slot = &self.slots[s as usize];
            if slot.rcpt == key.rcpt {
                return Some(s);
            }
            s = slot.next;
            if s == head {
                return None;
            }
        }
    }

    /// Adds a slot to its message's sibling ring.
    fn link(&mut self, s: u32) {
        let message = self.slots[s as usize].message;
        match self.by_msg.get(&message) {
            Some(&head) => {
                self.slots[s as usize].next = self.slots[head as usize].next;
                self.slots[head as usize].next = s;
            }
            None => {
                self.slots[s as usize].next = s;
                self.by_msg.insert(message, s);
            }
        }
    }

    fn unlink(&mut self, s: u32) {
        let message = self.slots[s as usize].message;
        let next = self.slots[s as usize].next;
        if next == s {
            self.by_msg.remove(&message);
            return;
        }
        let mut prev = next;
        while self.slots[prev as usize].next != s {
            prev = self.slots[prev as usize].next;
        }
        self.slots[prev as usize].next = next;
        if self.by_msg.get(&message) == Some(&s) {
            self.by_msg.insert(message, prev);
        }
    }

    /// Takes a slot out of whatever structure holds it.
    fn unplace(&mut self, s: u32) {
        let slot = self.slots[s as usize];
        match slot.state {
            State::Waiting => {
                self.timeline.remove(&(slot.due, s));
            }
            State::Pending => {
                self.rq_mut(slot.rq).pending.remove(&(slot.prio(), s));
            }
            State::Retry => {
                self.rq_mut(slot.rq).retry.remove(&(slot.prio(), s));
            }
            State::InFlight | State::Free => {}
        }
    }

    /// Puts a slot where its due time says.
    fn place(&mut self, s: u32, now: UnixMillis) -> Placement {
        let slot = self.slots[s as usize];
        if slot.due <= now {
            self.make_ready(s);
            Placement::Ready
        } else {
            self.timeline.insert((slot.due, s));
            self.slots[s as usize].state = State::Waiting;
            Placement::Waiting
        }
    }

    fn make_ready(&mut self, s: u32) {
        let slot = self.slots[s as usize];
        let key = (slot.prio(), s);
        let rq = self.rq_mut(slot.rq);
        if slot.deferred {
            rq.retry.insert(key);
            self.slots[s as usize].state = State::Retry;
        } else {
            rq.pending.insert(key);
            self.slots[s as usize].state = State::Pending;
        }
        self.enqueue_rq(slot.rq);
    }

    fn free_slot(&mut self, s: u32, now: UnixMillis) {
        self.unplace(s);
        let slot = self.slots[s as usize];
        self.unlink(s);
        self.slots[s as usize] = Slot {
            next: self.free,
            ..Slot::EMPTY
        };
        self.free = s;
        self.live -= 1;
        self.names.release(slot.domain);
        self.rq_mut(slot.rq).refs -= 1;
        self.maybe_free_rq(slot.rq, now);
    }

    // ------------------------------------------------------------ public API

    /// Indexes an entry (or updates it): newly accepted, recovered at
    /// start-up, or re-read after a change. `rcpt_domain` is the recipient's
    /// domain, which the entry itself does not carry.
    ///
    /// A held entry is removed from the index. An entry in flight is not
    /// touched but marked to be re-read when its job ends. An entry under a
    /// live lease of another node waits until the lease ends; this node's own
    /// leases (from before a restart) are ignored.
    pub fn insert(
        &mut self,
        e: &QueueEntry,
        rcpt_domain: &str,
        origin: Origin,
        now: UnixMillis,
    ) -> Placement {
        let existing = self.find(e.key);
        if let Some(s) = existing
            && self.slots[s as usize].state == State::InFlight
        {
            self.slots[s as usize].dirty = true;
            return Placement::InFlight;
        }
        // An entry already indexed is replaced only by a re-read after a
        // change (Refresh). A copy that arrives by another way (the accept
        // channel, or the start-up scan racing it) may have been read before
        // this node's own outcome for it, and taking it would undo that
        // outcome: a deferred entry would be delivered again at once.
        if let Some(s) = existing
            && origin != Origin::Refresh
        {
            return match self.slots[s as usize].state {
                State::Waiting => Placement::Waiting,
                _ => Placement::Ready,
            };
        }
        if e.held {
            if let Some(s) = existing {
                self.free_slot(s, now);
            }
            return Placement::Held;
        }
        let mut due = e.due;
        if let Some(l) = e.lease
            && l.owner != self.node
            && l.until > now
        {
            due = due.max(l.until);
        }
        if origin == Origin::Recovered && e.lane == Lane::Deferred && due <= now {
            due = now + self.rng.below(RESTART_SPREAD_MS);
        }
        let domain = rcpt_domain.trim_end_matches('.').to_ascii_lowercase();
        let qid = self.queue_for(&e.queue);
        let rqid = self.rq_for(qid, &e.route, &domain);
        let domain_id = self.names.acquire(&domain);
        // Count the new reference before dropping the old one: they may be
        // the same ready queue, which must not be freed in between.
        self.rq_mut(rqid).refs += 1;
        let s = match existing {
            Some(s) => {
                self.unplace(s);
                let old = self.slots[s as usize];
                self.names.release(old.domain);
                self.rq_mut(old.rq).refs -= 1;
                self.maybe_free_rq(old.rq, now);
                s
            }
            None => {
                let s = self.alloc();
                self.slots[s as usize].message = e.key.message;
                self.slots[s as usize].rcpt = e.key.rcpt;
                self.link(s);
                s
            }
        };
        let slot = &mut self.slots[s as usize];
        slot.due = due;
        slot.weight = e.weight;
        slot.rq = rqid;
        slot.domain = domain_id;
        slot.deferred = e.lane == Lane::Deferred;
        slot.dirty = false;
        slot.state = State::InFlight; // placed below
        self.place(s, now)
    }

    /// Forgets an entry (cancelled, or found missing). An entry in flight is
    /// only marked to be re-read when its job ends. Returns whether it was
    /// removed.
    pub fn remove(&mut self, key: EntryKey, now: UnixMillis) -> bool {
        let Some(s) = self.find(key) else {
            return false;
        };
        if self.slots[s as usize].state == State::InFlight {
            self.slots[s as usize].dirty = true;
            return false;
        }
        self.free_slot(s, now);
        true
    }

    /// Moves entries that became due into their ready lanes and returns the
    /// jobs to start now, honouring every limit. Call it after anything
    /// changed and whenever [`Scheduler::next_wake`] is reached.
    pub fn poll(&mut self, now: UnixMillis) -> Vec<Dispatch> {
        while let Some(&(due, s)) = self.timeline.first() {
            if due > now {
                break;
            }
            self.timeline.pop_first();
            self.make_ready(s);
        }
        while let Some(&(due, id)) = self.rate_wakes.first() {
            if due > now {
                break;
            }
            self.rate_wakes.pop_first();
            // The id may have been freed (and reused) since: enqueuing
            // an idle ready queue is harmless.
            if let Some(rq) = self.rqs[id as usize].as_mut()
                && rq.rate_wake == Some(due)
            {
                rq.rate_wake = None;
                self.enqueue_rq(id);
            }
        }
        if now.saturating_sub(self.last_sweep) >= SWEEP_EVERY_MS {
            self.last_sweep = now;
            for id in 0..self.rqs.len() as u32 {
                if self.rqs[id as usize].is_some() {
                    self.maybe_free_rq(id, now);
                }
            }
        }
        let mut out = Vec::new();
        for _ in 0..self.active.len() {
            let Some(qid) = self.active.pop_front() else {
                break;
            };
            if self.queues[qid as usize].is_none() {
                continue;
            }
            self.dispatch_queue(qid, now, &mut out);
            if self.q(qid).ring.is_empty() {
                self.q_mut(qid).active = false;
            } else {
                self.active.push_back(qid);
            }
        }
        out
    }

    fn dispatch_queue(&mut self, qid: u32, now: UnixMillis, out: &mut Vec<Dispatch>) {
        self.q_mut(qid).rate_wake = None;
        while let Some(&rqid) = self.q(qid).ring.front() {
            let rq = self.rq(rqid);
            if !rq.has_ready() {
                self.pop_ring(qid);
                continue;
            }
            if let Some(until) = rq.suspended_until {
                if now < until {
                    self.pop_ring(qid);
                    self.drain_suspended(rqid, until, out);
                    continue;
                }
                // The suspension is over: let exactly one probe through.
                let rq = self.rq_mut(rqid);
                rq.suspended_until = None;
                rq.probing = true;
            }
            let limit = self.limit(rqid);
            if self.rq(rqid).in_flight >= limit {
                self.pop_ring(qid);
                continue;
            }
            let q = self.q_mut(qid);
            if q.in_flight >= q.concurrency {
                break; // a finishing job frees a slot; the ring is kept
            }
            // `destination.rate`: this destination waits for its next
            // token, off the ring; the others go on.
            if let Some(at) = self.dest_rate_wait(qid, rqid, now) {
                self.pop_ring(qid);
                let rq = self.rq_mut(rqid);
                if rq.rate_wake != Some(at) {
                    rq.rate_wake = Some(at);
                    self.rate_wakes.insert((at, rqid));
                }
                continue;
            }
            let q = self.q_mut(qid);
            if let Some(b) = &mut q.bucket
                && !b.try_take(now)
            {
                // A shared bucket wakes the loop with a grant, not a time.
                q.rate_wake = (!b.shared).then(|| b.next_at());
                break;
            }
            if let Some(b) = &mut self.rq_mut(rqid).bucket {
                b.try_take(now);
            }
            self.pop_ring(qid);
            let job = self.build_job(rqid, Mode::Deliver, true);
            self.rq_mut(rqid).in_flight += 1;
            self.q_mut(qid).in_flight += 1;
            out.extend(job);
            let rq = self.rq(rqid);
            if rq.has_ready() && rq.in_flight < limit {
                self.rq_mut(rqid).in_ring = true;
                self.q_mut(qid).ring.push_back(rqid);
            }
        }
    }

    /// When ready queue `rqid` may start its next job under its queue's
    /// `destination.rate`, if that is later than `now`. Keeps the bucket in
    /// step with the configuration (a reload may have changed the rate).
    fn dest_rate_wait(&mut self, qid: u32, rqid: u32, now: UnixMillis) -> Option<UnixMillis> {
        let rate = self.q(qid).dest.rate;
        let rq = self.rq_mut(rqid);
        if rq.bucket.as_ref().map(|b| b.rate) != rate {
            rq.bucket = rate.map(|r| Bucket::new(r, false));
        }
        let b = rq.bucket.as_mut()?;
        b.refill(now);
        (b.tokens < 1.0 - 1e-9).then(|| b.next_at().max(now + 1))
    }

    fn pop_ring(&mut self, qid: u32) {
        if let Some(id) = self.q_mut(qid).ring.pop_front() {
            self.rq_mut(id).in_ring = false;
        }
    }

    /// Defers every ready entry of a suspended destination, without a
    /// connection (see [`SLOW_START_INITIAL`] on suspension).
    fn drain_suspended(&mut self, rqid: u32, until: UnixMillis, out: &mut Vec<Dispatch>) {
        let reason = format!(
            "delivery temporarily suspended: {}",
            self.rq(rqid)
                .last_error
                .as_deref()
                .unwrap_or("destination not responding")
        );
        while self.rq(rqid).has_ready() && self.rq(rqid).draining < SUSPENDED_DRAIN_MAX {
            let mode = Mode::Suspended {
                reason: reason.clone(),
                until,
            };
            match self.build_job(rqid, mode, false) {
                Some(d) => {
                    self.rq_mut(rqid).draining += 1;
                    out.push(d);
                }
                None => break,
            }
        }
    }

    /// **2:1 fresh-first alternation**: see [`FRESH_PER_RETRY`].
    fn pick_lane(&mut self, rqid: u32) -> Option<u32> {
        let rq = self.rq_mut(rqid);
        let take_pending = match (rq.pending.first(), rq.retry.first()) {
            (Some(_), Some(_)) => rq.fresh_run < FRESH_PER_RETRY,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let (_, s) = if take_pending {
            rq.fresh_run = (rq.fresh_run + 1).min(FRESH_PER_RETRY);
            rq.pending.pop_first()?
        } else {
            rq.fresh_run = 0;
            rq.retry.pop_first()?
        };
        Some(s)
    }

    /// Takes the best ready entry of a ready queue and the ready siblings
    /// that can share its transaction.
    fn build_job(&mut self, rqid: u32, mode: Mode, deliver: bool) -> Option<Dispatch> {
        let lead = self.pick_lane(rqid)?;
        self.slots[lead as usize].state = State::InFlight;
        let lead_slot = self.slots[lead as usize];
        let mut slots = vec![lead];
        let mut s = lead_slot.next;
        while s != lead && slots.len() < MAX_RCPTS_PER_JOB {
            let sib = self.slots[s as usize];
            if sib.rq == rqid
                && sib.domain == lead_slot.domain
                && matches!(sib.state, State::Pending | State::Retry)
            {
                self.unplace(s);
                self.slots[s as usize].state = State::InFlight;
                slots.push(s);
            }
            s = sib.next;
        }
        let mut rcpts: Vec<u32> = slots.iter().map(|&s| self.slots[s as usize].rcpt).collect();
        rcpts.sort_unstable();
        let job = JobId(self.next_job);
        self.next_job += 1;
        let rq = self.rq(rqid);
        let d = Dispatch {
            job,
            queue: self.q(rq.queue).name.clone(),
            route: self.routes.name(rq.route).to_string(),
            domain: self.names.name(lead_slot.domain).to_string(),
            message: lead_slot.message,
            rcpts,
            mode,
            jitter: self.rng.symmetric(JITTER),
        };
        self.jobs.insert(
            job.0,
            JobInfo {
                rq: rqid,
                slots,
                deliver,
            },
        );
        Some(d)
    }

    /// Records the end of a job: the destination's health and where each
    /// entry went. Returns the keys the driver must re-read from the store
    /// and hand back with [`Scheduler::insert`] (`Origin::Refresh`) or
    /// [`Scheduler::remove`].
    pub fn finish(&mut self, job: JobId, report: JobReport, now: UnixMillis) -> Vec<EntryKey> {
        let Some(info) = self.jobs.remove(&job.0) else {
            return Vec::new();
        };
        let rqid = info.rq;
        if info.deliver {
            let qid = self.rq(rqid).queue;
            self.rq_mut(rqid).in_flight -= 1;
            self.q_mut(qid).in_flight -= 1;
            self.apply_health(rqid, report.health, now);
        } else {
            let rq = self.rq_mut(rqid);
            rq.draining = rq.draining.saturating_sub(1);
        }
        let next: HashMap<EntryKey, Next> = report.next.into_iter().collect();
        let mut reload = Vec::new();
        for s in info.slots {
            let slot = self.slots[s as usize];
            let key = slot.key();
            match next.get(&key) {
                Some(Next::Gone) => self.free_slot(s, now),
                Some(Next::Retry { due }) if !slot.dirty => {
                    let slot = &mut self.slots[s as usize];
                    slot.deferred = true;
                    slot.due = *due;
                    self.place(s, now);
                }
                _ => {
                    self.free_slot(s, now);
                    reload.push(key);
                }
            }
        }
        if self.rqs[rqid as usize].is_some() {
            self.enqueue_rq(rqid);
            self.maybe_free_rq(rqid, now);
        }
        reload
    }

    fn apply_health(&mut self, rqid: u32, health: Health, now: UnixMillis) {
        let qid = self.rq(rqid).queue;
        let (cap, failure_limit, suspend) = {
            let q = self.q(qid);
            (
                q.dest_limit(),
                q.dest.failure_limit.max(1),
                u64::try_from(q.dest.suspend.as_millis()).unwrap_or(u64::MAX),
            )
        };
        let rq = self.rq_mut(rqid);
        let mut notice = None;
        match health {
            Health::Answered => {
                rq.failures = 0;
                rq.last_error = None;
                if rq.probing || rq.suspended_until.is_some() {
                    rq.probing = false;
                    rq.suspended_until = None;
                    rq.window = SLOW_START_INITIAL.min(cap);
                    notice = Some(false);
                } else {
                    rq.window = (rq.window + 1).min(cap);
                }
            }
            Health::ConnectionFailed { reason } => {
                rq.failures += 1;
                rq.last_error = Some(reason);
                if rq.probing || rq.failures >= failure_limit {
                    rq.probing = false;
                    rq.window = 1;
                    rq.suspended_until = Some(now.saturating_add(suspend));
                    notice = Some(true);
                } else {
                    rq.window = (rq.window / 2).max(1);
                }
            }
            Health::NotAttempted => {
                if rq.probing {
                    // The probe did not happen: allow another one now.
                    rq.probing = false;
                    rq.suspended_until = Some(now);
                }
            }
        }
        if let Some(suspended) = notice {
            let rq = self.rq(rqid);
            let queue = self.q(qid).name.clone();
            let destination = self.names.name(rq.dest).to_string();
            self.notices.push(if suspended {
                Notice::Suspended {
                    queue,
                    destination,
                    until: rq.suspended_until.unwrap_or(now),
                    reason: rq.last_error.clone().unwrap_or_default(),
                }
            } else {
                Notice::Resumed { queue, destination }
            });
        }
    }

    /// ETRN (RFC 1985) and `queue flush`: makes every matching entry that is
    /// waiting due now, and lets suspended matching destinations probe now.
    /// Returns how many messages have matching entries queued (waiting or
    /// ready, not in flight): 0 means "no messages waiting" (251).
    pub fn expedite(&mut self, target: &Target, now: UnixMillis) -> usize {
        enum M {
            All,
            Queue(u32),
            Domains(HashSet<u32>),
        }
        let m = match target {
            Target::All => M::All,
            Target::Queue(name) => match self.queue_index.get(name) {
                Some(&id) => M::Queue(id),
                None => return 0,
            },
            Target::Domain(d) => match self.names.get(d) {
                Some(id) => M::Domains(HashSet::from([id])),
                None => return 0,
            },
            Target::Subdomains(d) => {
                let suffix = format!(".{d}");
                M::Domains(
                    self.names
                        .iter()
                        .filter(|(_, n)| *n == d || n.ends_with(&suffix))
                        .map(|(id, _)| id)
                        .collect(),
                )
            }
        };
        let mut messages = HashSet::new();
        let mut touched = HashSet::new();
        for s in 0..self.slots.len() as u32 {
            let slot = self.slots[s as usize];
            if !matches!(slot.state, State::Waiting | State::Pending | State::Retry) {
                continue;
            }
            let hit = match &m {
                M::All => true,
                M::Queue(q) => self.rq(slot.rq).queue == *q,
                M::Domains(ids) => ids.contains(&slot.domain),
            };
            if !hit {
                continue;
            }
            messages.insert(slot.message);
            touched.insert(slot.rq);
            if slot.state == State::Waiting {
                self.timeline.remove(&(slot.due, s));
                self.slots[s as usize].due = now;
                self.make_ready(s);
            }
        }
        for rqid in touched {
            self.probe_now(rqid, now);
        }
        messages.len()
    }

    /// Lets destination `rqid` start now: a suspended one sends its probe
    /// at once instead of when its suspension ends. True if it was
    /// suspended. What ETRN, flush and `queue retry` do to a destination.
    fn probe_now(&mut self, rqid: u32, now: UnixMillis) -> bool {
        let rq = self.rq_mut(rqid);
        let suspended = rq.suspended_until.is_some_and(|t| t > now);
        if suspended {
            rq.suspended_until = Some(now);
        }
        self.enqueue_rq(rqid);
        suspended
    }

    /// An operator's `queue retry` of these entries: a suspended (dead)
    /// destination of any of them is probed now, as ETRN and flush do,
    /// instead of deferring the retried entries again without a connection
    /// until its suspension ends. Returns how many destinations were
    /// suspended.
    pub fn probe_destinations_of(&mut self, keys: &[EntryKey], now: UnixMillis) -> usize {
        let rqs: HashSet<u32> = keys
            .iter()
            .filter_map(|&k| self.find(k))
            .map(|s| self.slots[s as usize].rq)
            .collect();
        rqs.into_iter()
            .filter(|&rqid| self.probe_now(rqid, now))
            .count()
    }

    /// When [`Scheduler::poll`] next has something to do on its own: the
    /// earliest due time, or the moment a rate limit lets a job out. `None`
    /// when only an outside event (new mail, a finished job) can help.
    pub fn next_wake(&self) -> Option<UnixMillis> {
        let due = [
            self.timeline.first().map(|&(t, _)| t),
            self.rate_wakes.first().map(|&(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min();
        let rate = self
            .active
            .iter()
            .filter_map(|&q| self.queues[q as usize].as_ref()?.rate_wake)
            .min();
        match (due, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes what should be logged since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut st = Stats {
            entries: self.live,
            jobs: self.jobs.len(),
            queues: self.queue_index.len(),
            dynamic_queues: self.dynamic,
            destinations: self.rq_index.len(),
            suspended: self
                .rqs
                .iter()
                .flatten()
                .filter(|rq| rq.suspended_until.is_some() || rq.probing)
                .count(),
            ..Stats::default()
        };
        let mut by_queue: HashMap<u32, (usize, usize, usize)> = HashMap::new();
        for s in &self.slots {
            let counts = match s.state {
                State::Free => continue,
                _ => {
                    let q = self.rqs[s.rq as usize]
                        .as_ref()
                        .map_or(u32::MAX, |r| r.queue);
                    by_queue.entry(q).or_default()
                }
            };
            match s.state {
                State::Waiting => {
                    st.waiting += 1;
                    counts.0 += 1;
                }
                State::Pending | State::Retry => {
                    st.ready += 1;
                    counts.1 += 1;
                }
                State::InFlight => {
                    st.in_flight += 1;
                    counts.2 += 1;
                }
                State::Free => {}
            }
        }
        st.by_queue = by_queue
            .into_iter()
            .map(|(q, (w, r, f))| {
                let name = self
                    .queues
                    .get(q as usize)
                    .and_then(Option::as_ref)
                    .map_or_else(|| "(unknown)".to_string(), |v| v.name.clone());
                (name, w, r, f)
            })
            .collect();
        st.by_queue.sort();
        st
    }

    /// Where an entry is, or `None` if it is not indexed.
    pub fn locate(&self, key: EntryKey) -> Option<Location> {
        let slot = self.slots[self.find(key)? as usize];
        Some(match slot.state {
            State::Waiting => Location::Waiting { due: slot.due },
            State::Pending => Location::Ready {
                lane: Lane::Pending,
            },
            State::Retry => Location::Ready {
                lane: Lane::Deferred,
            },
            State::InFlight | State::Free => Location::InFlight,
        })
    }

    /// Queues whose shared rate bucket ran dry with work waiting, with
    /// their rate: the driver asks the store for tokens and hands them over
    /// with [`Scheduler::grant`]. Each is reported once per shortage.
    pub fn token_requests(&mut self) -> Vec<(String, ferrymail_config::Rate)> {
        let mut out = Vec::new();
        for q in self.queues.iter_mut().flatten() {
            if let Some(b) = &mut q.bucket
                && b.wanted
            {
                b.wanted = false;
                out.push((q.name.clone(), b.rate));
            }
        }
        out
    }

    /// Adds `tokens` taken from the shared store to queue `queue`'s bucket
    /// (ignored if the queue is gone or has no shared rate).
    pub fn grant(&mut self, queue: &str, tokens: u32) {
        let Some(&qid) = self.queue_index.get(queue) else {
            return;
        };
        if let Some(b) = &mut self.q_mut(qid).bucket
            && b.shared
        {
            // Never more than one burst on hand: tokens left over when
            // other nodes took the work must not add up to a bigger burst.
            b.tokens = (b.tokens + f64::from(tokens)).min(b.capacity);
        }
    }

    /// The keys of `message` that are indexed (in flight included), in no
    /// particular order: what the driver compares with the store's entries
    /// when another node changed the message.
    pub fn keys_of(&self, message: MessageId) -> Vec<EntryKey> {
        let Some(&head) = self.by_msg.get(&message) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut s = head;
        loop {
            out.push(self.slots[s as usize].key());
            s = self.slots[s as usize].next;
            if s == head {
                return out;
            }
        }
    }

    /// The virtual queue an indexed entry was placed in.
    pub fn queue_of(&self, key: EntryKey) -> Option<&str> {
        let slot = self.slots[self.find(key)? as usize];
        Some(&self.q(self.rq(slot.rq).queue).name)
    }

    /// The state of the ready queue for `destination` (a domain, or
    /// `route:<id>`) in virtual queue `queue`, over any route.
    pub fn destination(&self, queue: &str, destination: &str) -> Option<DestinationState> {
        let qid = *self.queue_index.get(queue)?;
        let dest = self.names.get(destination)?;
        let (id, rq) = self.rqs.iter().enumerate().find_map(|(i, r)| {
            r.as_ref()
                .filter(|r| r.queue == qid && r.dest == dest)
                .map(|r| (i as u32, r))
        })?;
        Some(DestinationState {
            in_flight: rq.in_flight,
            window: rq.window,
            limit: self.limit(id),
            failures: rq.failures,
            suspended_until: rq.suspended_until,
            probing: rq.probing,
            pending: rq.pending.len(),
            retry: rq.retry.len(),
        })
    }

    /// Names of the virtual queues that exist now.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.queue_index.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests;
