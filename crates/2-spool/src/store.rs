//! The two storage contracts of the spool. Every backend (embedded, PostgreSQL)
//! implements them, and every backend must pass [`crate::conformance`].
//!
//! The data-store contract is shaped around leases from the start — claim, renew,
//! complete, defer — so that several nodes can share one data store without a
//! redesign: a node claims due entries for a while, renews its claim while it
//! delivers, and ends it with the outcome. A node that dies simply lets its leases
//! lapse.
//!
//! An outcome that owes the sender a delivery status notification (RFC 3461
//! §6) is recorded together with that notice ([`DataStore::complete`] with a
//! notice, [`Deferral::notice`]), and the notice is settled by
//! [`DataStore::discharge`] only once the notification message is itself
//! durable in the spool. Until then the entry (and, for a final outcome, its
//! envelope and contents) stays, so a crash between the two cannot lose the
//! notice; it can at most send it twice.

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::{
    Discharge, EntryKey, Envelope, Lane, MessageId, NodeId, OwedNotice, QueueEntry, Routing,
    UnixMillis,
};

/// Why a store operation failed. Receive turns every variant into a 4xx reply
/// (the client retries later); it is never the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a read, write or sync.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend engine reported an error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A stored record could not be decoded: a bug or on-disk corruption.
    #[error("corrupt record {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What the decoder said.
        detail: String,
    },
    /// The store is shutting down and takes no more writes.
    #[error("store is closed")]
    Closed,
    /// The entry is leased by another node, or no longer exists.
    #[error("entry {0:?} is not leased by this node")]
    NotLeased(EntryKey),
}

/// What [`DataStore::claim`] should hand out.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The node taking the lease.
    pub owner: NodeId,
    /// Only entries of this virtual queue; `None` for any.
    pub queue: Option<String>,
    /// Which lane to take from.
    pub lane: Lane,
    /// Entries due at or before this time are eligible.
    pub now: UnixMillis,
    /// The lease deadline to set.
    pub lease_until: UnixMillis,
    /// At most this many entries.
    pub limit: usize,
}

/// The outcome of a transient failure, as [`DataStore::defer`] records it.
#[derive(Clone, Debug)]
pub struct Deferral {
    /// When to try again.
    pub due: UnixMillis,
    /// The error to show in `queue show` and in delay notifications.
    pub last_error: String,
    /// Delay notifications sent so far (the scheduler may have just sent one).
    pub notify_count: u32,
    /// The delay notice this deferral owes (a notify age was crossed and
    /// the recipient asked for NOTIFY=DELAY), recorded in the same write so
    /// a crash cannot lose it (RFC 3461 §6). `None` leaves a notice still
    /// owed from before in place.
    pub notice: Option<OwedNotice>,
    /// Whether a delivery was attempted: only then does the entry's attempt
    /// count go up. A deferral without one (its destination suspended as
    /// dead) must not use up `max-attempts` or move along the retry list.
    pub attempted: bool,
}

/// What [`DataStore::claim_job`] took and read: everything a delivery job
/// needs from the store before it can start.
#[derive(Clone, Debug, Default)]
pub struct ClaimedJob {
    /// The entries leased, as [`DataStore::claim_keys`] returns them (in
    /// the order of the keys, with the lease set). Empty: nothing was
    /// claimable, and nothing else was read.
    pub entries: Vec<QueueEntry>,
    /// The message's envelope; `None` when it is missing (or nothing was
    /// claimed).
    pub envelope: Option<Envelope>,
    /// The contents, when the caller asked for them and this store read
    /// them in the same operation: `Some(None)` when they are missing.
    /// `None` means not read: the caller reads them from the blob store.
    pub contents: Option<Option<Bytes>>,
}

/// What is left of a message after one of its entries was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Entries of the same message still queued. When it reaches zero the data
    /// store has also removed the envelope, and the caller must delete the blob
    /// unless `contents_removed` says this store already did.
    pub remaining: usize,
    /// The last entry went and this store removed the message's contents
    /// from its own blob table in the same commit. That table holds the
    /// contents only when the data store is also the blob store
    /// ([`crate::Spool::unified`]); then the caller need not delete them
    /// again, which saves a second commit per finished message.
    pub contents_removed: bool,
}

/// An operator action on queue entries, from the management API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    /// Never attempt until released.
    Hold,
    /// Undo a hold.
    Release,
    /// Make due now.
    Retry {
        /// The time that counts as now.
        now: UnixMillis,
    },
}

/// A node whose change feed has not completed a read for this long must not
/// trust its cursor any more (the store may have pruned changes it has not
/// read): it starts a new feed and rescans the queue instead.
pub const FEED_RESUME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Where a node stands in a shared store's change feed
/// ([`DataStore::feed_start`]). Opaque outside the store that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedCursor {
    /// Everything committed as of this snapshot has been read (PostgreSQL
    /// `pg_snapshot` text).
    pub(crate) low: String,
    /// A read in progress: the snapshot it reads up to, when the changes
    /// did not fit one page.
    pub(crate) high: Option<String>,
    /// Paging within `low..high`: the last change row read.
    pub(crate) after: i64,
}

/// What other nodes changed in a shared store since a [`FeedCursor`]: how
/// a node learns, while running, of mail accepted, deferred, completed or
/// acted on elsewhere, and of ETRN and flush issued on other nodes.
#[derive(Clone, Debug, Default)]
pub struct FeedBatch {
    /// Each message whose entries changed, with its entries as they are now
    /// (and each entry's recipient domain). An entry missing from the list
    /// is gone (delivered, failed, cancelled); an empty list means the
    /// whole message is gone.
    pub messages: Vec<(MessageId, Vec<(QueueEntry, String)>)>,
    /// ETRN or `queue flush` arguments given on other nodes, in the order
    /// read: `""` for everything, otherwise the ETRN syntax (`domain`,
    /// `@domain`, `#queue`).
    pub expedite: Vec<String>,
    /// More changes are waiting: read again at once.
    pub more: bool,
}

/// Holds envelopes and per-recipient queue entries. See the module docs for the
/// lease model.
#[async_trait]
pub trait DataStore: Send + Sync + 'static {
    /// Durably records a newly accepted message. Returns only once the envelope
    /// and every entry would survive a crash (the 250 after DATA depends on it).
    /// Implementations share one sync among concurrent callers (group commit).
    async fn insert(&self, envelope: &Envelope, entries: &[QueueEntry]) -> Result<(), StoreError>;

    /// Like [`DataStore::insert`], but also stores the contents in the same
    /// durable commit. Only called when this store is also the blob store
    /// (see [`crate::Spool::unified`]): one sync instead of two, and no window
    /// in which contents exist without their envelope.
    async fn insert_with_contents(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError>;

    /// Leases up to `claim.limit` claimable entries (see
    /// [`QueueEntry::is_claimable`]) of one lane, earliest due first, and returns
    /// them with the lease set.
    async fn claim(&self, claim: &Claim) -> Result<Vec<QueueEntry>, StoreError>;

    /// Leases exactly the named entries for `owner` until `lease_until`, and
    /// returns the ones it leased, with the lease set, in the order of `keys`.
    ///
    /// This is how the scheduler takes the entries it picked from its own
    /// index (by destination, priority and lane) instead of by due order as
    /// [`DataStore::claim`] does. The due time is not checked: the scheduler
    /// may start an entry early (ETRN, flush). An entry is skipped when it is
    /// missing, held, or under a live lease (`until > now`) of another node.
    /// A lease `owner` already holds (also one from before a restart) is taken
    /// over and extended, so a restarted node reclaims its own entries
    /// without waiting for their leases to lapse. Two nodes claiming the same
    /// key at once: exactly one gets it.
    async fn claim_keys(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Starts a delivery job: [`DataStore::claim_keys`] for `keys` (all of
    /// message `message`), and, when anything was claimed, the message's
    /// envelope and, with `contents` set, its contents. `contents` may be
    /// set only when this store is also the blob store
    /// ([`crate::Spool::unified`]); a store need not honour it.
    ///
    /// Why: a job needs all three before it can deliver, and with a store
    /// across the network each read is a round trip (PostgreSQL: three per
    /// relayed message, see BENCHMARKS.md, issue 6). A store that can do it
    /// in one round trip overrides this; the default calls the existing
    /// operations one after another and leaves the contents to the caller,
    /// which is right for the embedded store, whose reads are local.
    ///
    /// Claiming follows every rule of [`DataStore::claim_keys`]. An error
    /// may leave entries claimed (the default: the envelope read failed
    /// after the claim); their leases lapse or this owner takes them over.
    async fn claim_job(
        &self,
        owner: NodeId,
        message: MessageId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
        contents: bool,
    ) -> Result<ClaimedJob, StoreError> {
        let _ = contents;
        let entries = self.claim_keys(owner, keys, now, lease_until).await?;
        if entries.is_empty() {
            return Ok(ClaimedJob::default());
        }
        let envelope = self.envelope(message).await?;
        Ok(ClaimedJob {
            entries,
            envelope,
            contents: None,
        })
    }

    /// Extends the leases `owner` holds on `keys`. Returns how many were renewed;
    /// a missing one was lost (expired and claimed elsewhere, or cancelled).
    async fn renew(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        until: UnixMillis,
    ) -> Result<usize, StoreError>;

    /// Ends an entry for good: delivered, failed permanently, or expired. Fails
    /// with [`StoreError::NotLeased`] unless `owner` holds the lease.
    ///
    /// Without `notice` the entry is removed (and the envelope with the
    /// message's last entry). With a final `notice` (one a notification is
    /// owed for, RFC 3461 §6) the entry is kept in the *notice owed* state
    /// instead, in the same write: lease cleared, attempt counted, never
    /// claimable again
    /// ([`QueueEntry::is_notice_owed`]), envelope and contents kept, until
    /// [`DataStore::discharge`] removes it. Then `remaining` counts it.
    ///
    /// A delay notice still owed on the entry is superseded by the final
    /// outcome: replaced by the final notice, or dropped with the entry
    /// when the final outcome owes none. The delay notice was handed to the
    /// DSN layer when it was recorded, so it is sent unless the process
    /// dies before it is queued; then the sender learns the final outcome
    /// (or, delivered without a notice, nothing about a delay that is
    /// over).
    async fn complete(
        &self,
        owner: NodeId,
        key: EntryKey,
        notice: Option<&OwedNotice>,
    ) -> Result<Removal, StoreError>;

    /// Records a transient failure: the entry moves to the deferred lane with a
    /// new due time, its attempt count rises by one, and the lease is released.
    async fn defer(
        &self,
        owner: NodeId,
        key: EntryKey,
        deferral: &Deferral,
    ) -> Result<(), StoreError>;

    /// Moves an entry `owner` holds the lease on to `routing` (`queue
    /// requeue`, Postfix's `postsuper -r`): its virtual queue, schedule,
    /// route and weight as the routing expressions decide them now, due at
    /// `due`, and the lease released. Lane, attempts, errors and notices
    /// stay. Why: a route renamed or removed from the configuration would
    /// otherwise hold its queued mail until it expired. Fails with
    /// [`StoreError::NotLeased`] unless `owner` holds the lease.
    async fn reroute(
        &self,
        owner: NodeId,
        key: EntryKey,
        routing: &Routing,
        due: UnixMillis,
    ) -> Result<(), StoreError>;

    /// Settles notices that are now durably queued (the notification
    /// message itself was accepted into the spool): an entry whose owed
    /// notice matches the [`Discharge`]'s slot loses it; a final one is
    /// removed altogether, and the envelope with the message's last entry.
    /// A discharge that matches nothing (gone, never owed, or a newer
    /// notice recorded since) changes nothing, so repeating one is
    /// harmless. Returns the messages left without entries: a store that
    /// is also the blob store removed their contents in the same commit;
    /// with a separate blob store the caller must delete them. Leases are
    /// ignored: a delay notice is
    /// settled while the recipient's next attempt may be running.
    async fn discharge(&self, notices: &[Discharge]) -> Result<Vec<MessageId>, StoreError>;

    /// Takes over notices owed that no node is sending (a store several
    /// nodes share): those whose holder's time has lapsed, and with `own`
    /// also those `owner` holds (at its start: its own before a crash,
    /// which no other process can be sending, as a node name runs once).
    /// Each one taken is `owner`'s to send from now on, for as long as the
    /// store gives a node that records one; the caller hands it to the DSN
    /// layer, which discharges it once queued. At most `limit` per call.
    ///
    /// Why: the node that records a notice sends it from memory. If it
    /// dies and never comes back, someone else must send it; and a node
    /// that starts must not send again what a live node is batching. A
    /// single-node store has nothing to take over: every notice is the
    /// node's own, and restart recovery hands them over from its scan
    /// (this default answers with none).
    async fn take_owed(
        &self,
        owner: NodeId,
        now: UnixMillis,
        own: bool,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let _ = (owner, now, own, limit);
        Ok(Vec::new())
    }

    /// Reads one envelope.
    async fn envelope(&self, id: MessageId) -> Result<Option<Envelope>, StoreError>;

    /// Reads every remaining entry of one message, in recipient order.
    async fn entries(&self, id: MessageId) -> Result<Vec<QueueEntry>, StoreError>;

    /// Reads entries in key order, starting after `after`, at most `limit`.
    /// Restart recovery and `queue list` page through the whole queue with it;
    /// it never touches message contents.
    async fn scan(
        &self,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Applies an operator action to the given entries, ignoring leases (an
    /// attempt in flight finishes; its outcome is still recorded). Returns how many
    /// entries changed.
    async fn admin(&self, keys: &[EntryKey], action: AdminAction) -> Result<usize, StoreError>;

    /// Removes entries regardless of leases (operator cancel). Returns the
    /// messages that have no entries left; their envelopes are gone too, and
    /// so are their contents when this store is also the blob store (in the
    /// same commit); with a separate blob store the caller must delete them.
    async fn cancel(&self, keys: &[EntryKey]) -> Result<Vec<MessageId>, StoreError>;

    /// Called once at a graceful shutdown, after the last change: leaves the
    /// store so that the next start has as little as possible to recover
    /// (the embedded store writes its memtables out, so no journal needs
    /// replaying). Nothing is lost without it; a restart after a crash just
    /// takes longer. Changes after it are still accepted.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    // ------------------------------------------------------------ cluster
    //
    // Only a store several nodes share has anything to do here; a
    // single-node store (embedded) answers with no-ops.

    /// Registers node `name` (lease owner `node`) and returns the 10-bit
    /// message-id tag it must use, unique among the nodes sharing this
    /// store and stable across restarts; `None` when the store is not
    /// shared (any tag will do). It also makes the store attribute this
    /// node's later changes to it, so that its own feed skips them.
    async fn register_node(&self, name: &str, node: NodeId) -> Result<Option<u16>, StoreError>;

    /// Extends the hold of the owed notices of `keys` that this node holds
    /// (see [`DataStore::take_owed`]) from `now`, for as long as a fresh
    /// one: while the node still has them (a notification waiting for the
    /// spool), no other node takes them over and sends them too. Answers
    /// how many were extended. A store of one node has nothing to extend.
    async fn renew_owed(&self, keys: &[EntryKey], now: UnixMillis) -> Result<usize, StoreError> {
        let _ = (keys, now);
        Ok(0)
    }

    /// Completes when this node's claim on its name (see
    /// [`DataStore::register_node`]) was taken by another process: the
    /// server must stop, or two processes would deliver the same mail.
    /// Never completes for a store of one node.
    fn node_claim_lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(std::future::pending())
    }

    /// The newest message id with node tag `tag` that the store holds:
    /// where this node's [`IdGenerator`](crate::IdGenerator) starts after a
    /// restart, so that a clock that stepped back meanwhile cannot mint an
    /// id a queued message already has. `None` when there is none.
    async fn newest_message(&self, tag: u16) -> Result<Option<MessageId>, StoreError> {
        let _ = tag;
        Ok(None)
    }

    /// Starts a change feed at "now": every change committed after this
    /// call returns is read by [`DataStore::feed_read`] from the returned
    /// cursor. `None` for a store no other node writes to.
    async fn feed_start(&self) -> Result<Option<FeedCursor>, StoreError>;

    /// Reads what other nodes changed after `cursor`, at most about `limit`
    /// changes, and advances `cursor`. Every committed change is read
    /// exactly once, however late its transaction commits; changes made
    /// through this store object after [`DataStore::register_node`] are
    /// left out (the node knows them).
    async fn feed_read(
        &self,
        cursor: &mut FeedCursor,
        limit: usize,
    ) -> Result<FeedBatch, StoreError>;

    /// Tells every other node that ETRN or `queue flush` was given here
    /// with `argument` (`""` for everything), through the change feed.
    async fn announce_expedite(&self, argument: &str) -> Result<(), StoreError>;

    /// Whether other nodes may share this store: then virtual queue rates
    /// hold for the whole cluster, through [`DataStore::take_tokens`].
    fn shared(&self) -> bool;

    /// Takes up to `want` tokens from virtual queue `queue`'s cluster-wide
    /// token bucket (`capacity` tokens, refilled at `capacity` per `period`
    /// by the store's clock, starting full) and returns how many it got.
    /// A node spends what it got before asking again, so the store sees one
    /// round trip per batch, not per message.
    async fn take_tokens(
        &self,
        queue: &str,
        capacity: u64,
        period: std::time::Duration,
        want: u32,
    ) -> Result<u32, StoreError>;
}

/// Holds message contents, keyed by message id. Written once, read by delivery
/// and DSN generation, deleted when no recipient refers to it any more.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Durably stores the contents of a message. Returns only once they would
    /// survive a crash; concurrent callers share syncs.
    async fn put(&self, id: MessageId, contents: Bytes) -> Result<(), StoreError>;

    /// Reads the contents, or `None` if there are none.
    async fn get(&self, id: MessageId) -> Result<Option<Bytes>, StoreError>;

    /// Removes the contents. Removing what is absent is not an error.
    async fn delete(&self, id: MessageId) -> Result<(), StoreError>;

    /// Called once at a graceful shutdown; see [`DataStore::close`].
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
