//! The embedded store: data and blobs in one local key-value engine, zero
//! set-up, one node.
//!
//! # Group commit
//!
//! Every write goes through one writer thread. It takes whatever requests are
//! waiting, applies them one after another against the engine plus an overlay
//! of this batch's own writes (so a later request in the batch sees an earlier
//! one), commits the whole batch with a single durable sync, and only then
//! answers every request in it. While one batch syncs, the next one gathers, so
//! the number of syncs per second stays bounded while messages per sync grow
//! with load. Reads go straight to the engine from the caller.
//!
//! # What waits for the disk
//!
//! Only a batch that holds a change someone was promised durability for is
//! synced ([`Op::needs_sync`]): an accepted message (its 250 depends on it)
//! and operator actions. Delivery bookkeeping (completions, deferrals,
//! deleting finished contents; leases are not written at all, see below) is
//! written to the operating system at once but reaches the disk with the
//! next synced batch. A crash of the process loses none of it; a crash of
//! the machine may lose the last of it, which only means a message
//! delivered again or retried early, never mail lost. This saves an
//! fdatasync share on the bookkeeping commit of every relayed message. Unsynced writes do not stay
//! so for long: the writer syncs them once it has been idle for
//! [`IDLE_SYNC`], after [`MAX_UNSYNCED`] at the latest, and when the store
//! closes.
//!
//! # Leases live in memory
//!
//! The embedded store belongs to one process (fjall locks its directory),
//! and a restarted node takes back its own leases anyway
//! ([`DataStore::claim_keys`]), so a lease written to disk would protect
//! nothing that memory does not. Leases are kept in a table in memory
//! ([`Leases`]) beside the engine: a claim reads the entries and takes the
//! lease under that table's lock, on the caller's thread, without a write,
//! a journal record or a hand-off to the writer thread (one of the three
//! store round trips of every relayed message; measured 8–11% less CPU per
//! relayed message). `complete` and `defer` check the lease in the table and
//! pin it while their write commits, so that no claim can take the entry in
//! between; entries read back ([`DataStore::entries`], [`DataStore::scan`])
//! carry the lease from the table. A lease a store written by an older
//! release kept on disk is ignored: it was this node's, from before the
//! restart.
//!
//! # Layout
//!
//! Four tables (engine keyspaces):
//!
//! * `blob`: message id (8 bytes, big-endian) → contents;
//! * `env`: message id → encoded [`Envelope`];
//! * `entry`: [`EntryKey::to_bytes`] → encoded [`QueueEntry`];
//! * `ready`: lane (1 byte) ‖ eligible-at (8 bytes BE) ‖ entry key → empty. The
//!   eligible-at time is the due time, or the lease deadline while leased, so a
//!   claim is a range scan up to "now" that never meets a leased entry. Held
//!   entries and entries with a final notice owed are not indexed at all.

mod engine;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::codec::{decode, encode};
use crate::model::*;
use crate::store::*;
use engine::{Engine, Table};

/// Most requests applied in one commit. Bounds the latency one batch adds.
const MAX_BATCH: usize = 4096;

/// The embedded data and blob store.
pub struct EmbeddedStore {
    engine: Arc<Engine>,
    tx: std_mpsc::Sender<Request>,
    leases: Arc<Leases>,
}

/// The leases of the store's entries (see "Leases live in memory"): who
/// holds each leased entry, and until when. One lock, held for a claim's
/// reads or a writer batch's checks; never across a disk sync.
#[derive(Default)]
struct Leases(std::sync::Mutex<std::collections::HashMap<EntryKey, Lease>>);

/// The deadline of a lease pinned by a `complete` or `defer` that is being
/// written: no claim takes the entry until the write is done and the lease
/// dropped.
const PINNED: UnixMillis = UnixMillis::MAX;

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<EntryKey, Lease>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every change is one insert or remove), so a poisoned lock is used
        // as is.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes stored entry records as the store's readers see them: with
    /// their leases from the table (one lock for the lot; a start-up scan
    /// reads pages of thousands). A record that does not decode is an
    /// error, or, with `skip_bad` (scans: see [`DataStore::scan`] here),
    /// logged and left out.
    fn decode_entries(
        &self,
        rows: Vec<engine::Row>,
        skip_bad: bool,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let table = self.lock();
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            match decode::<QueueEntry>(&v, "queue entry") {
                Ok(mut e) => {
                    e.lease = table.get(&e.key).copied();
                    out.push(e);
                }
                Err(error) if skip_bad => tracing::error!(
                    key = ?EntryKey::from_bytes(&k),
                    %error,
                    "embedded store: a queue entry cannot be read and is skipped (damaged, or written by a newer Ferrymail)"
                ),
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }
}

/// One change request for the writer thread.
struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

enum Op {
    PutBlob(MessageId, Bytes),
    DeleteBlob(MessageId),
    Insert(Box<Envelope>, Vec<QueueEntry>, Option<Bytes>),
    Claim(Claim),
    Complete(NodeId, EntryKey, Option<OwedNotice>),
    Defer(NodeId, EntryKey, Deferral),
    Reroute(NodeId, EntryKey, Routing, UnixMillis),
    Admin(Vec<EntryKey>, AdminAction),
    Cancel(Vec<EntryKey>),
    Discharge(Vec<Discharge>),
}

impl Op {
    /// Whether this change must be on disk before its caller hears back
    /// (see "What waits for the disk" above).
    fn needs_sync(&self) -> bool {
        match self {
            Op::PutBlob(..)
            | Op::Insert(..)
            | Op::Admin(..)
            | Op::Reroute(..)
            | Op::Cancel(..) => true,
            Op::DeleteBlob(..)
            | Op::Claim(..)
            | Op::Complete(..)
            | Op::Defer(..)
            // After the notification itself was synced: losing a discharge
            // to a machine crash only means the notice is sent again.
            | Op::Discharge(..) => false,
        }
    }
}

enum Outcome {
    Done,
    Claimed(Vec<QueueEntry>),
    Count(usize),
    Removed(Removal),
    Gone(Vec<MessageId>),
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(path)?;
        let engine = Arc::new(Engine::open(&path.join("spool"))?);
        let (tx, rx) = std_mpsc::channel::<Request>();
        let leases = Arc::new(Leases::default());
        let (writer_engine, writer_leases) = (engine.clone(), leases.clone());
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer(writer_engine, writer_leases, rx))?;
        Ok(Arc::new(EmbeddedStore { engine, tx, leases }))
    }

    async fn submit(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn mid_key(id: MessageId) -> [u8; 8] {
    id.0.to_be_bytes()
}

fn ready_key(lane: Lane, at: UnixMillis, key: EntryKey) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = match lane {
        Lane::Pending => 0,
        Lane::Deferred => 1,
    };
    k[1..9].copy_from_slice(&at.to_be_bytes());
    k[9..].copy_from_slice(&key.to_bytes());
    k
}

/// When an entry can next be claimed, or `None` if never (held, or
/// finished with a notice owed).
fn eligible_at(e: &QueueEntry) -> Option<UnixMillis> {
    if e.held || e.is_notice_owed() {
        return None;
    }
    Some(match e.lease {
        Some(l) => e.due.max(l.until),
        None => e.due,
    })
}

/// One batch's writes, consulted before the engine so that requests later in a
/// batch see the effects of earlier ones.
struct Batch<'a> {
    engine: &'a Engine,
    leases: &'a Leases,
    writes: engine::Writes,
    /// Leases pinned by this batch's `complete`s and `defer`s, with their
    /// deadlines: dropped once the batch is committed, restored if it fails.
    pinned: Vec<(EntryKey, UnixMillis)>,
    /// What the request being applied overwrote in `writes`, oldest first:
    /// the key and its previous slot (`None`: the batch had not touched
    /// it). A request that fails halfway is taken back out of the batch
    /// with it ([`Batch::roll_back`]), so a request is all or nothing, as
    /// its caller hears, whatever the others in its batch do.
    undo: Vec<(Slot, Option<Option<Vec<u8>>>)>,
}

/// One key of one table, as [`engine::Writes`] is keyed.
type Slot = (Table, Vec<u8>);

impl<'a> Batch<'a> {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(&(t, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.engine.get(t, key),
        }
    }

    fn put(&mut self, t: Table, key: &[u8], value: Vec<u8>) {
        self.write(t, key, Some(value));
    }

    fn delete(&mut self, t: Table, key: &[u8]) {
        self.write(t, key, None);
    }

    fn write(&mut self, t: Table, key: &[u8], value: Option<Vec<u8>>) {
        let slot = (t, key.to_vec());
        let before = self.writes.insert(slot.clone(), value);
        self.undo.push((slot, before));
    }

    /// Applies one request: all of its writes, or (when it fails) none of
    /// them, and its pinned leases back as they were.
    fn apply_whole(&mut self, op: Op) -> Result<Outcome, StoreError> {
        self.undo.clear();
        let pinned = self.pinned.len();
        let result = self.apply(op);
        if result.is_err() {
            self.roll_back(pinned);
        }
        result
    }

    /// Undoes the writes of the request being applied, newest first, and
    /// restores the deadlines of the leases it pinned (from `pinned` on).
    fn roll_back(&mut self, pinned: usize) {
        while let Some((slot, before)) = self.undo.pop() {
            match before {
                Some(value) => self.writes.insert(slot, value),
                None => self.writes.remove(&slot),
            };
        }
        let mut leases = self.leases.lock();
        for (key, until) in self.pinned.drain(pinned..) {
            if let Some(l) = leases.get_mut(&key) {
                l.until = until;
            }
        }
    }

    fn entry(&self, key: EntryKey) -> Result<Option<QueueEntry>, StoreError> {
        self.get(Table::Entry, &key.to_bytes())?
            .map(|v| decode(&v, "queue entry"))
            .transpose()
    }

    /// Writes `new` in place of `old` (either may be absent), keeping the ready
    /// index in step.
    fn replace(&mut self, old: Option<&QueueEntry>, new: Option<&QueueEntry>) {
        if let Some(o) = old
            && let Some(at) = eligible_at(o)
        {
            self.delete(Table::Ready, &ready_key(o.lane, at, o.key));
        }
        match new {
            Some(n) => {
                self.put(Table::Entry, &n.key.to_bytes(), encode(n));
                if let Some(at) = eligible_at(n) {
                    self.put(Table::Ready, &ready_key(n.lane, at, n.key), Vec::new());
                }
            }
            None => {
                if let Some(o) = old {
                    self.delete(Table::Entry, &o.key.to_bytes());
                }
            }
        }
    }

    /// Keys of the entries of one message that exist after this batch so far.
    fn message_entry_keys(&self, id: MessageId) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = mid_key(id);
        let mut keys: std::collections::BTreeSet<Vec<u8>> = self
            .engine
            .prefix_keys(Table::Entry, &prefix)?
            .into_iter()
            .collect();
        for ((t, k), v) in self
            .writes
            .range((Table::Entry, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == Table::Entry && k.starts_with(&prefix))
        {
            debug_assert_eq!(*t, Table::Entry);
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Removes one entry; if it was the message's last, the envelope too,
    /// and with `contents` also the message's contents.
    fn remove_entry(&mut self, e: &QueueEntry, contents: bool) -> Result<Removal, StoreError> {
        self.replace(Some(e), None);
        let remaining = self.message_entry_keys(e.key.message)?.len();
        let mut contents_removed = false;
        if remaining == 0 {
            self.delete(Table::Env, &mid_key(e.key.message));
            if contents {
                self.delete(Table::Blob, &mid_key(e.key.message));
                contents_removed = true;
            }
        }
        Ok(Removal {
            remaining,
            contents_removed,
        })
    }

    /// The entry `owner` holds the lease of, with that lease pinned until
    /// the batch is committed (see [`PINNED`]).
    fn leased_entry(&mut self, owner: NodeId, key: EntryKey) -> Result<QueueEntry, StoreError> {
        let Some(e) = self.entry(key)? else {
            return Err(StoreError::NotLeased(key));
        };
        let mut leases = self.leases.lock();
        match leases.get_mut(&key) {
            Some(l) if l.owner == owner => {
                if l.until != PINNED {
                    self.pinned.push((key, l.until));
                    l.until = PINNED;
                }
                Ok(e)
            }
            _ => Err(StoreError::NotLeased(key)),
        }
    }

    fn apply(&mut self, op: Op) -> Result<Outcome, StoreError> {
        match op {
            Op::PutBlob(id, data) => {
                self.put(Table::Blob, &mid_key(id), data.to_vec());
                Ok(Outcome::Done)
            }
            Op::DeleteBlob(id) => {
                self.delete(Table::Blob, &mid_key(id));
                Ok(Outcome::Done)
            }
            Op::Insert(env, entries, contents) => {
                // A plain insert, as PostgreSQL's: an id that exists is
                // refused, never overwritten (it would replace another
                // message's envelope, entries and contents).
                if self.get(Table::Env, &mid_key(env.id))?.is_some() {
                    return Err(StoreError::Engine(format!(
                        "message id {} exists already",
                        env.id
                    )));
                }
                if let Some(c) = contents {
                    self.put(Table::Blob, &mid_key(env.id), c.to_vec());
                }
                self.put(Table::Env, &mid_key(env.id), encode(&*env));
                for e in &entries {
                    self.replace(None, Some(e));
                }
                Ok(Outcome::Done)
            }
            Op::Claim(c) => {
                let from = ready_key(
                    c.lane,
                    0,
                    EntryKey {
                        message: MessageId(0),
                        rcpt: 0,
                    },
                );
                let to = ready_key(
                    c.lane,
                    c.now.saturating_add(1),
                    EntryKey {
                        message: MessageId(0),
                        rcpt: 0,
                    },
                );
                let mut out: Vec<QueueEntry> = Vec::new();
                // All or nothing: a claim that fails halfway gives back the
                // leases it took, since its caller hears of none of them.
                let give_back = |out: &[QueueEntry], e: StoreError| {
                    let mut leases = self.leases.lock();
                    for taken in out {
                        leases.remove(&taken.key);
                    }
                    e
                };
                // The engine's view may be stale for entries this batch already
                // changed; each candidate is re-read through the batch.
                let keys = self.engine.range_keys(Table::Ready, &from, &to)?;
                for k in keys {
                    if out.len() >= c.limit {
                        break;
                    }
                    let Some(key) = EntryKey::from_bytes(&k[9..]) else {
                        continue;
                    };
                    let Some(mut e) = self.entry(key).map_err(|e| give_back(&out, e))? else {
                        continue;
                    };
                    let mut leases = self.leases.lock();
                    e.lease = leases.get(&key).copied();
                    if !e.is_claimable(c.now)
                        || e.lane != c.lane
                        || c.queue.as_ref().is_some_and(|q| &e.queue != q)
                    {
                        continue;
                    }
                    let lease = Lease {
                        owner: c.owner,
                        until: c.lease_until,
                    };
                    leases.insert(key, lease);
                    e.lease = Some(lease);
                    out.push(e);
                }
                Ok(Outcome::Claimed(out))
            }
            Op::Complete(owner, key, notice) => {
                let e = self.leased_entry(owner, key)?;
                match notice.filter(OwedNotice::is_final) {
                    // Contents live in this store's blob table whenever it
                    // is the blob store; when it is not, the table is empty
                    // and the delete is a no-op.
                    None => self.remove_entry(&e, true).map(Outcome::Removed),
                    Some(notice) => {
                        let mut n = e.clone();
                        n.lease = None;
                        n.attempts += 1;
                        n.notice = Some(notice);
                        self.replace(Some(&e), Some(&n));
                        let remaining = self.message_entry_keys(key.message)?.len();
                        Ok(Outcome::Removed(Removal {
                            remaining,
                            contents_removed: false,
                        }))
                    }
                }
            }
            Op::Defer(owner, key, d) => {
                let e = self.leased_entry(owner, key)?;
                let mut n = e.clone();
                n.lane = Lane::Deferred;
                n.due = d.due;
                if d.attempted {
                    n.attempts += 1;
                }
                n.lease = None;
                n.last_error = Some(d.last_error);
                n.notify_count = d.notify_count;
                if let Some(notice) = d.notice {
                    n.notice = Some(notice);
                }
                self.replace(Some(&e), Some(&n));
                Ok(Outcome::Done)
            }
            Op::Reroute(owner, key, routing, due) => {
                let e = self.leased_entry(owner, key)?;
                let mut n = e.clone();
                n.queue = routing.queue;
                n.schedule = routing.schedule;
                n.route = routing.route;
                n.weight = routing.weight;
                n.due = due;
                n.lease = None;
                self.replace(Some(&e), Some(&n));
                Ok(Outcome::Done)
            }
            Op::Admin(keys, action) => {
                let mut n = 0;
                for key in keys {
                    let Some(e) = self.entry(key)? else { continue };
                    let mut m = e.clone();
                    match action {
                        AdminAction::Hold => m.held = true,
                        AdminAction::Release => m.held = false,
                        AdminAction::Retry { now } => m.due = now,
                    }
                    self.replace(Some(&e), Some(&m));
                    n += 1;
                }
                Ok(Outcome::Count(n))
            }
            Op::Cancel(keys) => {
                let mut gone = Vec::new();
                let mut removed = Vec::new();
                for key in keys {
                    let Some(e) = self.entry(key)? else { continue };
                    // Contents with the last entry, in this commit, as
                    // `Complete` does (a no-op when the blob store is
                    // another): the caller's delete is another request,
                    // and a crash before it would leave them for good.
                    if self.remove_entry(&e, true)?.remaining == 0 {
                        gone.push(key.message);
                    }
                    removed.push(key);
                }
                // Once the whole request applies: the delivery holding an
                // entry finds it gone (NotLeased).
                let mut leases = self.leases.lock();
                for key in removed {
                    leases.remove(&key);
                }
                Ok(Outcome::Gone(gone))
            }
            Op::Discharge(notices) => {
                let mut gone = Vec::new();
                for d in notices {
                    let Some(e) = self.entry(d.key)? else {
                        continue;
                    };
                    if e.notice.as_ref().map(OwedNotice::which) != Some(d.slot) {
                        continue;
                    }
                    if e.is_notice_owed() {
                        // The notice is queued: contents go with the last
                        // entry, in this commit (see `Cancel`).
                        if self.remove_entry(&e, true)?.remaining == 0 {
                            gone.push(d.key.message);
                        }
                    } else {
                        let mut n = e.clone();
                        n.notice = None;
                        self.replace(Some(&e), Some(&n));
                    }
                }
                Ok(Outcome::Gone(gone))
            }
        }
    }
}

/// Longest time unsynced bookkeeping stays unsynced while the writer is busy
/// (see "What waits for the disk"); an idle writer syncs it at once.
pub(crate) const MAX_UNSYNCED: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the writer must have been idle before it syncs unsynced
/// bookkeeping on its own (under steady load the next synced batch does it).
pub(crate) const IDLE_SYNC: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread: batch, apply, commit once, answer.
fn writer(engine: Arc<Engine>, leases: Arc<Leases>, rx: std_mpsc::Receiver<Request>) {
    // When the oldest commit not yet synced was made.
    let mut unsynced_since: Option<std::time::Instant> = None;
    let sync_now = |engine: &Engine, since: &mut Option<std::time::Instant>| {
        if since.take().is_some()
            && let Err(e) = engine.sync()
        {
            tracing::error!(error = %e, "spool sync failed");
        }
    };
    loop {
        let first = match rx.try_recv() {
            Ok(r) => r,
            Err(std_mpsc::TryRecvError::Empty) if unsynced_since.is_some() => {
                match rx.recv_timeout(IDLE_SYNC) {
                    Ok(r) => r,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        // Quiet for a while: sync what is unsynced.
                        sync_now(&engine, &mut unsynced_since);
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            Err(std_mpsc::TryRecvError::Empty) => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
            Err(std_mpsc::TryRecvError::Disconnected) => break,
        };
        let mut requests = vec![first];
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut batch = Batch {
            engine: &engine,
            leases: &leases,
            writes: BTreeMap::new(),
            pinned: Vec::new(),
            undo: Vec::new(),
        };
        let mut results = Vec::with_capacity(requests.len());
        let mut replies = Vec::with_capacity(requests.len());
        let sync = requests.iter().any(|r| r.op.needs_sync())
            || unsynced_since.is_some_and(|t| t.elapsed() >= MAX_UNSYNCED);
        for r in requests {
            results.push(batch.apply_whole(r.op));
            replies.push(r.reply);
        }
        let writes = std::mem::take(&mut batch.writes);
        let pinned = std::mem::take(&mut batch.pinned);
        let committed = engine.commit(writes, sync);
        {
            // Written: the entries' leases end (the entry is gone, finished
            // or deferred). Not written: the owner still holds them and may
            // try again, as the caller hears.
            let mut table = leases.lock();
            for (key, until) in pinned {
                if committed.is_ok() {
                    table.remove(&key);
                } else if let Some(l) = table.get_mut(&key) {
                    l.until = until;
                }
            }
        }
        if let Err(e) = committed {
            tracing::error!(error = %e, "spool commit failed");
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Engine(msg.clone())));
            }
            continue;
        }
        if sync {
            unsynced_since = None;
        } else if unsynced_since.is_none() {
            unsynced_since = Some(std::time::Instant::now());
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
    // The store is closing: leave nothing unsynced behind.
    sync_now(&engine, &mut unsynced_since);
}

fn unexpected() -> StoreError {
    StoreError::Engine("writer returned an unexpected outcome".into())
}

#[async_trait]
impl DataStore for EmbeddedStore {
    async fn insert(&self, envelope: &Envelope, entries: &[QueueEntry]) -> Result<(), StoreError> {
        match self
            .submit(Op::Insert(
                Box::new(envelope.clone()),
                entries.to_vec(),
                None,
            ))
            .await?
        {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn insert_with_contents(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError> {
        match self
            .submit(Op::Insert(
                Box::new(envelope.clone()),
                entries.to_vec(),
                Some(contents),
            ))
            .await?
        {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<QueueEntry>, StoreError> {
        match self.submit(Op::Claim(claim.clone())).await? {
            Outcome::Claimed(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    /// On the caller's thread: reads the entries and takes their leases
    /// in the lease table (see "Leases live in memory"); nothing is written.
    async fn claim_keys(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut seen = std::collections::BTreeSet::new();
        let mut leases = self.leases.lock();
        for &key in keys {
            if !seen.insert(key) {
                continue; // named twice: claimed (or not) once
            }
            let Some(v) = self.engine.get(Table::Entry, &key.to_bytes())? else {
                continue;
            };
            let mut e: QueueEntry = decode(&v, "queue entry")?;
            // A pinned lease (its outcome being written) is live whoever asks.
            let taken = leases
                .get(&key)
                .is_some_and(|l| l.until == PINNED || (l.owner != owner && l.until > now));
            if e.held || e.is_notice_owed() || taken {
                continue;
            }
            let lease = Lease {
                owner,
                until: lease_until,
            };
            leases.insert(key, lease);
            e.lease = Some(lease);
            out.push(e);
        }
        Ok(out)
    }

    /// In the lease table only (see "Leases live in memory").
    async fn renew(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        until: UnixMillis,
    ) -> Result<usize, StoreError> {
        let mut leases = self.leases.lock();
        let mut n = 0;
        for key in keys {
            if let Some(l) = leases.get_mut(key)
                && l.owner == owner
                && l.until != PINNED
            {
                l.until = until;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn complete(
        &self,
        owner: NodeId,
        key: EntryKey,
        notice: Option<&OwedNotice>,
    ) -> Result<Removal, StoreError> {
        match self
            .submit(Op::Complete(owner, key, notice.cloned()))
            .await?
        {
            Outcome::Removed(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn defer(
        &self,
        owner: NodeId,
        key: EntryKey,
        deferral: &Deferral,
    ) -> Result<(), StoreError> {
        match self.submit(Op::Defer(owner, key, deferral.clone())).await? {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn reroute(
        &self,
        owner: NodeId,
        key: EntryKey,
        routing: &Routing,
        due: UnixMillis,
    ) -> Result<(), StoreError> {
        match self
            .submit(Op::Reroute(owner, key, routing.clone(), due))
            .await?
        {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn discharge(&self, notices: &[Discharge]) -> Result<Vec<MessageId>, StoreError> {
        if notices.is_empty() {
            return Ok(Vec::new());
        }
        match self.submit(Op::Discharge(notices.to_vec())).await? {
            Outcome::Gone(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn envelope(&self, id: MessageId) -> Result<Option<Envelope>, StoreError> {
        self.engine
            .get(Table::Env, &mid_key(id))?
            .map(|v| decode(&v, "envelope"))
            .transpose()
    }

    async fn entries(&self, id: MessageId) -> Result<Vec<QueueEntry>, StoreError> {
        self.leases
            .decode_entries(self.engine.prefix(Table::Entry, &mid_key(id))?, false)
    }

    /// A record that cannot be decoded (damaged, or written by a newer
    /// Ferrymail with a format this one does not know) is logged and
    /// skipped, not an error: an error would stop the start-up recovery
    /// and `queue list` at that key for good, stranding every entry after
    /// it. The skipped entry stays in the store, untouched.
    async fn scan(
        &self,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let mut from = match after {
            Some(k) => {
                let mut b = k.to_bytes().to_vec();
                b.push(0); // strictly after `k`
                b
            }
            None => Vec::new(),
        };
        loop {
            let engine = self.engine.clone();
            let start = from.clone();
            let rows =
                tokio::task::spawn_blocking(move || engine.range_from(Table::Entry, &start, limit))
                    .await
                    .map_err(|e| StoreError::Engine(e.to_string()))??;
            let full = rows.len() >= limit.max(1);
            let Some((last, _)) = rows.last() else {
                return Ok(Vec::new());
            };
            from = last.clone();
            from.push(0);
            let page = self.leases.decode_entries(rows, true)?;
            // A page of nothing but such records is not the end: read on.
            if !page.is_empty() || !full {
                return Ok(page);
            }
        }
    }

    async fn admin(&self, keys: &[EntryKey], action: AdminAction) -> Result<usize, StoreError> {
        match self.submit(Op::Admin(keys.to_vec(), action)).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn cancel(&self, keys: &[EntryKey]) -> Result<Vec<MessageId>, StoreError> {
        match self.submit(Op::Cancel(keys.to_vec())).await? {
            Outcome::Gone(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.flush_memtables())
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?
    }

    // The embedded store belongs to one node (its files are locked by one
    // process), so there is no cluster: no registry, no feed, nobody to
    // tell about a flush.

    async fn register_node(&self, _name: &str, _node: NodeId) -> Result<Option<u16>, StoreError> {
        Ok(None)
    }

    async fn newest_message(&self, tag: u16) -> Result<Option<MessageId>, StoreError> {
        // Keys are ids in big-endian order, so the newest come last; a node
        // whose id (hence tag) changed finds its own among the last few.
        Ok(self
            .engine
            .last_keys(Table::Env, 1024)?
            .into_iter()
            .filter_map(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(|k| MessageId(u64::from_be_bytes(k)))
            .find(|id| (id.0 >> 12) & 0x3ff == u64::from(tag)))
    }

    async fn feed_start(&self) -> Result<Option<FeedCursor>, StoreError> {
        Ok(None)
    }

    async fn feed_read(
        &self,
        _cursor: &mut FeedCursor,
        _limit: usize,
    ) -> Result<FeedBatch, StoreError> {
        Ok(FeedBatch::default())
    }

    async fn announce_expedite(&self, _argument: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }

    /// Rates are kept by the scheduler itself with a store of one node;
    /// this grants whatever is asked.
    async fn take_tokens(
        &self,
        _queue: &str,
        _capacity: u64,
        _period: std::time::Duration,
        want: u32,
    ) -> Result<u32, StoreError> {
        Ok(want)
    }
}

#[async_trait]
impl BlobStore for EmbeddedStore {
    async fn put(&self, id: MessageId, contents: Bytes) -> Result<(), StoreError> {
        match self.submit(Op::PutBlob(id, contents)).await? {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn get(&self, id: MessageId) -> Result<Option<Bytes>, StoreError> {
        Ok(self.engine.get(Table::Blob, &mid_key(id))?.map(Bytes::from))
    }

    async fn delete(&self, id: MessageId) -> Result<(), StoreError> {
        match self.submit(Op::DeleteBlob(id)).await? {
            Outcome::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        DataStore::close(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::TestStores;

    async fn make() -> TestStores {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        TestStores {
            data: s.clone(),
            blob: s,
            unified: true,
            guard: Box::new(dir),
        }
    }

    crate::conformance_suite!(make);

    /// The same contract with data and contents in two separate stores, as
    /// when `[storage] data` and `blob` name different stores.
    mod separate {
        use super::*;

        async fn make() -> TestStores {
            let dir = tempfile::tempdir().unwrap();
            let data = EmbeddedStore::open(&dir.path().join("data")).unwrap();
            let blob = EmbeddedStore::open(&dir.path().join("blob")).unwrap();
            TestStores {
                data,
                blob,
                unified: false,
                guard: Box::new(dir),
            }
        }

        crate::conformance_suite!(make);
    }

    /// A request that fails halfway writes nothing: an admin action or a
    /// cancel over several entries, one of which will not decode, leaves
    /// the others as they were, as its caller (told of the error) expects.
    /// The record that will not decode is written into the engine directly,
    /// as on-disk corruption would leave it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_request_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let env = crate::conformance::sample_envelope(5, 2);
        s.insert(&env, &crate::conformance::sample_entries(&env, "q", 1))
            .await
            .unwrap();
        let good = EntryKey {
            message: env.id,
            rcpt: 0,
        };
        let bad = EntryKey {
            message: MessageId(6),
            rcpt: 0,
        };
        let mut garbage = engine::Writes::new();
        garbage.insert(
            (Table::Entry, bad.to_bytes().to_vec()),
            Some(b"garbage".to_vec()),
        );
        s.engine.commit(garbage, true).unwrap();

        let held = s.admin(&[good, bad], AdminAction::Hold).await;
        assert!(matches!(held, Err(StoreError::Corrupt { .. })), "{held:?}");
        let entries = s.entries(env.id).await.unwrap();
        assert!(entries.iter().all(|e| !e.held), "{entries:?}");

        let cancelled = s.cancel(&[good, bad]).await;
        assert!(
            matches!(cancelled, Err(StoreError::Corrupt { .. })),
            "{cancelled:?}"
        );
        assert_eq!(s.entries(env.id).await.unwrap().len(), 2);
        assert!(s.envelope(env.id).await.unwrap().is_some());

        // The same requests without the bad key apply whole.
        assert_eq!(s.admin(&[good], AdminAction::Hold).await.unwrap(), 1);
        assert_eq!(s.cancel(&[good]).await.unwrap(), Vec::<MessageId>::new());
        assert_eq!(s.entries(env.id).await.unwrap().len(), 1);
    }

    /// A scan skips records it cannot decode (and pages of nothing else)
    /// instead of failing: a failure stopped the start-up recovery at that
    /// key for good, and every entry after it was never delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_skips_records_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        // Good messages 1 and 9 around bad records of messages 2 to 6 (a
        // newer format version, and garbage).
        for id in [1, 9] {
            let env = crate::conformance::sample_envelope(id, 1);
            s.insert(&env, &crate::conformance::sample_entries(&env, "q", 1))
                .await
                .unwrap();
        }
        let mut bad = engine::Writes::new();
        for id in 2..=6 {
            let key = EntryKey {
                message: MessageId(id),
                rcpt: 0,
            };
            let value = if id % 2 == 0 {
                vec![200, 1, 2, 3]
            } else {
                b"garbage".to_vec()
            };
            bad.insert((Table::Entry, key.to_bytes().to_vec()), Some(value));
        }
        s.engine.commit(bad, true).unwrap();

        let all = s.scan(None, 100).await.unwrap();
        let ids: Vec<u64> = all.iter().map(|e| e.key.message.0).collect();
        assert_eq!(ids, [1, 9]);
        // Pages of two: the second holds only bad records, and the scan
        // reads on to message 9 rather than ending there.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.scan(after, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.key);
            paged.extend(page.iter().map(|e| e.key.message.0));
        }
        assert_eq!(paged, [1, 9]);
    }

    /// What was acknowledged survives closing and reopening the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::conformance::sample_envelope(5, 2);
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.put(env.id, Bytes::from_static(b"hello")).await.unwrap();
            s.insert(&env, &crate::conformance::sample_entries(&env, "q", 1))
                .await
                .unwrap();
        }
        // The writer thread ends when the last sender drops; give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.envelope(env.id).await.unwrap(), Some(env.clone()));
        assert_eq!(s.entries(env.id).await.unwrap().len(), 2);
        assert_eq!(
            s.get(env.id).await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
    }
}
