//! The `fs` blob store: message contents as one file per message under a
//! directory, for operators who want contents out of the database (a
//! PostgreSQL data store keeps only the small, often rewritten records; the
//! large, write-once contents go to a file system, possibly shared by every
//! node over NFS).
//!
//! It holds contents only ([`BlobStore`]); envelopes and queue entries need a
//! data store (embedded or PostgreSQL), and the configuration refuses
//! `[storage] data` naming an `fs` store.
//!
//! # Layout
//!
//! `<path>/<xx>/<id>`: `<id>` is the message id in 16 hex digits, `<xx>` one
//! of 256 subdirectories (`00`..`ff`) chosen by a hash of the id, so that no
//! directory grows huge (a million queued messages make about 4,000 files a
//! directory). The low bits of an id are a per-millisecond counter, mostly
//! zero, so they would not spread files; the hash mixes all of them. The
//! subdirectories are made when the store opens, so a `put` never creates a
//! directory (whose own entry would need a sync of its parent). A file being
//! written is `<path>/<xx>/.<id>.<pid>.<n>.tmp` until it is complete.
//!
//! # What a `put` waits for
//!
//! See [`FsBlobStore::put`]: write a temporary file, fdatasync it, rename it
//! into place, fsync the directory. Each message costs two syncs of its own
//! (the embedded store shares one among every message of a batch), which is
//! the price of contents outside the data store.
//!
//! # Deleting after a grace period
//!
//! [`BlobStore::delete`] only marks the contents deleted ([`get`] answers
//! `None` at once); the file is unlinked [`DELETE_GRACE`] later. The caller
//! deletes contents after the data store removed the message's last entry,
//! and the embedded data store does not sync that removal at once (see its
//! "What waits for the disk": bookkeeping reaches the disk within its
//! `MAX_UNSYNCED`, 500 ms, after 50 ms of quiet when idle). An unlink in another file system
//! object has no order with the data store's journal: a sync by anyone may
//! make it durable first, and a machine crash would then bring back entries
//! whose contents are gone, which the scheduler retries until they expire
//! and then reports as failed, though they were delivered. Unlinking after the grace keeps the order the embedded
//! store alone keeps: the entry's removal is durable before its contents'.
//! A delete still pending at a crash leaves an orphan, which a later sweep
//! removes ([`FsBlobStore::sweep_orphans`]).
//!
//! # Orphans
//!
//! Contents are written before the envelope ([`crate::Spool::accept`]), so a
//! crash in between leaves a file no envelope refers to. The server sweeps
//! files the data store does not know, once they are older than
//! [`ORPHAN_MIN_AGE`]: younger ones may belong to a message whose envelope
//! is being inserted right now, by this node or, on a shared path, by another.
//! It sweeps at start and then every [`SWEEP_EVERY`]
//! ([`FsBlobStore::keep_sweeping`]): the orphans a crash leaves are young at
//! the restart that follows it, and a server that then runs for months
//! would otherwise keep them until its next restart.
//!
//! [`get`]: BlobStore::get

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::MessageId;
use crate::store::{BlobStore, DataStore, StoreError};

/// How long a deleted message's file stays on disk before it is unlinked
/// (see "Deleting after a grace period"): longer than the embedded data
/// store may keep a removal unsynced.
pub const DELETE_GRACE: Duration = Duration::from_secs(2);

// The grace must outlast the embedded store's longest unsynced window (plus
// its idle sync) with room to spare, or the reason for it is gone.
const _: () = assert!(
    DELETE_GRACE.as_millis()
        >= 2 * (crate::embedded::MAX_UNSYNCED.as_millis() + crate::embedded::IDLE_SYNC.as_millis())
);

/// How often pending deletes are looked at.
const DELETE_TICK: Duration = Duration::from_millis(250);

/// Files younger than this are never swept as orphans: the message they hold
/// may be between its contents' `put` and its envelope's insert, on this
/// node or on another sharing the path. An hour is far beyond any insert
/// (the client is answered 451 after `session.timeout.data-end`, 5 minutes
/// by default; a store that hung longer and then committed the envelope
/// anyway could lose the contents to a sweep) and beyond the clock skew
/// between nodes and an NFS server (file times come from the server's
/// clock) that NTP leaves.
pub const ORPHAN_MIN_AGE: Duration = Duration::from_secs(60 * 60);

/// How often a running server sweeps orphans again after the sweep at
/// start ([`FsBlobStore::keep_sweeping`]). Each sweep lists every file and
/// asks the data store about each one older than [`ORPHAN_MIN_AGE`] (one
/// lookup per message queued longer than that), so it is not made often;
/// with the minimum age, an orphan is gone at most two hours after it was
/// left.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);

/// Contents in files: see the module documentation.
pub struct FsBlobStore {
    /// The directory given as `path`.
    root: PathBuf,
    /// Deleted messages whose files are still on disk, with when to unlink
    /// them. [`BlobStore::get`] treats them as gone.
    pending: Mutex<HashMap<MessageId, Instant>>,
    /// How long a delete waits ([`DELETE_GRACE`]; tests shorten it).
    grace: Duration,
}

/// What one [`FsBlobStore::sweep_orphans`] found, for the start-up log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files removed: contents of messages the data store does not know, and
    /// temporary files of interrupted writes.
    pub removed: usize,
    /// Files kept because they are younger than the minimum age.
    pub young: usize,
    /// Files kept because the data store knows their message.
    pub kept: usize,
    /// Files whose name is not one this store writes, left alone.
    pub foreign: usize,
}

/// Serial numbers for temporary file names, unique within the process; with
/// the process id they are unique among the nodes sharing a path (message
/// ids already are, but a name must never be reused while a write is in
/// flight, whatever the caller does).
static TMP_SERIAL: AtomicU64 = AtomicU64::new(0);

impl FsBlobStore {
    /// Opens (creating if need be) the store at `path`, and starts the task
    /// that unlinks deleted contents after their grace. Must be called within
    /// a Tokio runtime.
    pub async fn open(path: &Path) -> Result<Arc<FsBlobStore>, StoreError> {
        Self::open_with_grace(path, DELETE_GRACE).await
    }

    async fn open_with_grace(path: &Path, grace: Duration) -> Result<Arc<FsBlobStore>, StoreError> {
        let root = path.to_path_buf();
        let r = root.clone();
        blocking(move || make_layout(&r)).await?;
        let store = Arc::new(FsBlobStore {
            root,
            pending: Mutex::new(HashMap::new()),
            grace,
        });
        tokio::spawn(unlink_when_due(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Removes files whose message `data` does not know (orphans of a crash
    /// between contents and envelope, or of deletes pending at a crash) and
    /// temporary files of interrupted writes, but only those last modified at
    /// least `min_age` ago (the server uses [`ORPHAN_MIN_AGE`]). Safe while
    /// the server runs: a message being accepted has a young file.
    pub async fn sweep_orphans(
        &self,
        data: &dyn DataStore,
        min_age: Duration,
    ) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        for shard in 0..=255u8 {
            let dir = self.root.join(shard_name(shard));
            // One directory at a time, so that memory stays small whatever
            // the number of files.
            let files = blocking(move || list_files(&dir)).await?;
            for (path, name, modified) in files {
                let old = SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age >= min_age);
                if is_tmp_name(&name) {
                    // Never referred to by anything: only the age matters.
                    if !old {
                        swept.young += 1;
                        continue;
                    }
                } else if let Some(id) = parse_name(&name) {
                    if !old {
                        swept.young += 1;
                        continue;
                    }
                    if data.envelope(id).await?.is_some() {
                        swept.kept += 1;
                        continue;
                    }
                } else {
                    swept.foreign += 1;
                    continue;
                }
                blocking(move || remove_if_present(&path)).await?;
                swept.removed += 1;
            }
        }
        Ok(swept)
    }

    /// Sweeps ([`FsBlobStore::sweep_orphans`]) now and then every `every`,
    /// handing each result to `report`; ends when the store is dropped. A
    /// failed sweep (a store that could not answer) is reported and tried
    /// again at the next turn.
    pub async fn keep_sweeping(
        store: Weak<FsBlobStore>,
        data: Arc<dyn DataStore>,
        min_age: Duration,
        every: Duration,
        report: impl Fn(&Path, Result<Swept, StoreError>),
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let swept = store.sweep_orphans(&*data, min_age).await;
            report(store.path(), swept);
        }
    }

    /// The subdirectory and file of message `id`.
    fn file_of(&self, id: MessageId) -> (PathBuf, PathBuf) {
        let dir = self.root.join(shard_name(shard_of(id)));
        let file = dir.join(file_name(id));
        (dir, file)
    }

    fn pending_deletes(&self) -> MutexGuard<'_, HashMap<MessageId, Instant>> {
        // Every change to the map is a single insert or remove, so a panic
        // elsewhere cannot leave it half-updated: use a poisoned lock as is.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the pending deletes due at `now` (all of them with `None`).
    fn take_due(&self, now: Option<Instant>) -> Vec<PathBuf> {
        let mut due = Vec::new();
        self.pending_deletes().retain(|id, at| {
            if now.is_none_or(|now| *at <= now) {
                due.push(*id);
                false
            } else {
                true
            }
        });
        due.into_iter().map(|id| self.file_of(id).1).collect()
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    /// Durably writes the contents to their file. Each step:
    ///
    /// 1. Write them to a new temporary file in the final directory (same
    ///    file system, so the rename below is a rename, not a copy).
    /// 2. `fdatasync` it: the data, and the metadata needed to read it back
    ///    (the size), are on stable storage (fdatasync(2); POSIX
    ///    `fdatasync`, synchronized I/O data integrity completion).
    /// 3. `rename` it to the final name. POSIX `rename()` is atomic for other
    ///    processes: the new name refers to the old file or the complete new
    ///    one, never to a partial file, and an existing file is replaced
    ///    whole. Done only after step 2, so that a crash cannot leave the
    ///    final name pointing at a file whose data never reached the disk.
    /// 4. `fsync` the directory: the file's name is a directory entry, and
    ///    syncing a file does not make its entry durable ("an explicit
    ///    fsync() on a file descriptor for the directory is also needed",
    ///    fsync(2)). Without it a crash after the 250 could lose the name,
    ///    and with it the message. (On NFS, the client's fsync of the file
    ///    sends COMMIT for its writes, and the server performs RENAME
    ///    synchronously, RFC 1813; the directory fsync costs nothing there.)
    ///
    /// Only then does the caller insert the envelope ([`crate::Spool::accept`]),
    /// so an envelope never points at contents that are not durable.
    /// A `put` cancels a pending delete of the same id.
    async fn put(&self, id: MessageId, contents: Bytes) -> Result<(), StoreError> {
        self.pending_deletes().remove(&id);
        let (dir, file) = self.file_of(id);
        blocking(move || write_durably(&dir, &file, id, &contents)).await
    }

    async fn get(&self, id: MessageId) -> Result<Option<Bytes>, StoreError> {
        if self.pending_deletes().contains_key(&id) {
            return Ok(None);
        }
        let (_, file) = self.file_of(id);
        blocking(move || match std::fs::read(&file) {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Marks the contents deleted; the file goes [`DELETE_GRACE`] later (see
    /// "Deleting after a grace period"). No sync: a delete lost in a crash
    /// leaves an orphan for a later sweep, never missing contents.
    async fn delete(&self, id: MessageId) -> Result<(), StoreError> {
        let at = Instant::now() + self.grace;
        self.pending_deletes().insert(id, at);
        Ok(())
    }

    /// Unlinks every pending delete now. The server closes the data store
    /// first, which makes its removals durable, so nothing is left to wait
    /// for.
    async fn close(&self) -> Result<(), StoreError> {
        let due = self.take_due(None);
        blocking(move || unlink_all(&due)).await
    }
}

/// The background task of [`FsBlobStore::open`]: unlinks deleted contents
/// once their grace is over; ends when the store is dropped.
async fn unlink_when_due(store: Weak<FsBlobStore>) {
    let mut tick = tokio::time::interval(DELETE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let due = store.take_due(Some(Instant::now()));
        drop(store);
        if !due.is_empty() {
            // Failures are logged per file by `unlink_all`.
            let _ = blocking(move || unlink_all(&due)).await;
        }
    }
}

/// Runs blocking file I/O on Tokio's blocking pool, off the async workers.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, StoreError>
where
    T: Send + 'static,
    E: Into<StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(StoreError::Engine(format!(
            "fs blob store: a file operation did not finish: {e}"
        ))),
    }
}

/// Steps 1 to 4 of [`FsBlobStore::put`].
fn write_durably(dir: &Path, file: &Path, id: MessageId, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name(id),
        std::process::id(),
        TMP_SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let mut renamed = false;
    let result = (|| {
        // Mail is private: readable by the server's user only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_data()?;
        drop(f);
        std::fs::rename(&tmp, file)?;
        renamed = true;
        sync_dir(dir)
    })();
    if result.is_err() {
        // The caller answers 4xx and inserts no envelope: leave nothing
        // behind (what this misses, the sweep gets).
        let _ = std::fs::remove_file(&tmp);
        if renamed {
            let _ = std::fs::remove_file(file);
        }
    }
    result
}

/// Makes `dir`'s entries (names created, renamed) durable: fsync(2) on the
/// directory itself.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the root and its 256 subdirectories, and makes every directory
/// entry it created durable (a new directory's entry lives in its parent).
/// Other nodes may do the same at the same moment: an existing one is fine.
fn make_layout(root: &Path) -> std::io::Result<()> {
    if !root.is_dir() {
        std::fs::create_dir_all(root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let mut created = false;
    for shard in 0..=255u8 {
        match std::fs::create_dir(root.join(shard_name(shard))) {
            Ok(()) => created = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if created {
        sync_dir(root)?;
    }
    Ok(())
}

/// The regular files of one subdirectory, with their names and modification
/// times; an absent directory has none.
fn list_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String, SystemTime)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed since the listing (another node's sweep, a delete).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((entry.path(), name, meta.modified()?));
    }
    Ok(out)
}

/// Unlinks `file`; one already gone is not an error.
fn remove_if_present(file: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unlinks deleted contents. A failure is logged and otherwise left: the
/// file is an orphan now, for the next start's sweep.
fn unlink_all(files: &[PathBuf]) -> std::io::Result<()> {
    for f in files {
        if let Err(e) = remove_if_present(f) {
            tracing::warn!(file = %f.display(), error = %e, "fs blob store: cannot remove deleted contents; the next start sweeps them");
        }
    }
    Ok(())
}

/// Which of the 256 subdirectories holds `id`: the top byte of a 64-bit mix
/// of the id (SplitMix64's finalizer), which depends on every bit of it.
fn shard_of(id: MessageId) -> u8 {
    let mut z = id.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^= z >> 31;
    (z >> 56) as u8
}

fn shard_name(shard: u8) -> String {
    format!("{shard:02x}")
}

fn file_name(id: MessageId) -> String {
    id.to_string()
}

/// The message id a final file name stands for: exactly 16 lower-case hex
/// digits, as [`file_name`] writes them.
fn parse_name(name: &str) -> Option<MessageId> {
    (name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| name.parse().ok())
        .flatten()
}

/// Whether `name` is a temporary file of [`write_durably`].
fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.')
        && name.ends_with(".tmp")
        && name.get(1..17).and_then(parse_name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{TestStores, sample_entries, sample_envelope};
    use crate::embedded::EmbeddedStore;

    /// The conformance suite with embedded data and contents in files, as
    /// with `[storage] data = "<embedded>"`, `blob = "<fs>"`.
    async fn make() -> TestStores {
        let dir = tempfile::tempdir().unwrap();
        let data = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        let blob = FsBlobStore::open(&dir.path().join("blobs")).await.unwrap();
        TestStores {
            data,
            blob,
            unified: false,
            guard: Box::new(dir),
        }
    }

    crate::conformance_suite!(make);

    /// Every regular file under `root`, recursively.
    fn files_under(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn age(path: &Path, by: Duration) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_file_per_message_in_its_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::open(dir.path()).await.unwrap();
        let shards = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(shards, 256, "every subdirectory made at open");
        let id = MessageId(0x0193_0000_0040_0000);
        let body = Bytes::from_static(b"Received: x\r\n\r\nhello\r\n");
        s.put(id, body.clone()).await.unwrap();
        let files = files_under(dir.path());
        assert_eq!(
            files,
            vec![
                dir.path()
                    .join(shard_name(shard_of(id)))
                    .join("0193000000400000")
            ],
            "one file, no temporary left behind"
        );
        assert_eq!(std::fs::read(&files[0]).unwrap(), body);
        assert_eq!(s.get(id).await.unwrap(), Some(body));
    }

    #[test]
    fn ids_of_one_millisecond_spread_over_subdirectories() {
        // Ids minted in one millisecond differ only in their low bits.
        let base = 1_700_000_000_000u64 << 22;
        let shards: std::collections::HashSet<u8> =
            (0..64).map(|n| shard_of(MessageId(base | n))).collect();
        assert!(shards.len() > 40, "{} subdirectories", shards.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overwrite_replaces_whole_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::open(dir.path()).await.unwrap();
        let id = MessageId(42);
        s.put(id, Bytes::from(vec![b'a'; 10_000])).await.unwrap();
        s.put(id, Bytes::from_static(b"short")).await.unwrap();
        assert_eq!(s.get(id).await.unwrap(), Some(Bytes::from_static(b"short")));
        assert_eq!(files_under(dir.path()).len(), 1);
        assert_eq!(s.get(MessageId(43)).await.unwrap(), None);
        s.delete(MessageId(43)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_hides_at_once_and_unlinks_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::open_with_grace(dir.path(), Duration::from_millis(600))
            .await
            .unwrap();
        let (a, b) = (MessageId(1), MessageId(2));
        s.put(a, Bytes::from_static(b"a")).await.unwrap();
        s.put(b, Bytes::from_static(b"b")).await.unwrap();
        s.delete(a).await.unwrap();
        assert_eq!(s.get(a).await.unwrap(), None, "gone for readers at once");
        assert_eq!(files_under(dir.path()).len(), 2, "still on disk");
        let deadline = Instant::now() + Duration::from_secs(10);
        while files_under(dir.path()).len() != 1 {
            assert!(Instant::now() < deadline, "never unlinked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(s.get(b).await.unwrap(), Some(Bytes::from_static(b"b")));

        // A put cancels a pending delete of the same id.
        s.delete(b).await.unwrap();
        s.put(b, Bytes::from_static(b"again")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(s.get(b).await.unwrap(), Some(Bytes::from_static(b"again")));

        // Close unlinks what is pending without waiting.
        s.delete(b).await.unwrap();
        BlobStore::close(&*s).await.unwrap();
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweep_removes_only_old_files_of_unknown_messages() {
        let dir = tempfile::tempdir().unwrap();
        let data = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        let root = dir.path().join("blobs");
        let s = FsBlobStore::open(&root).await.unwrap();
        let hour = Duration::from_secs(3600);

        // Known to the data store, old: kept.
        let known = sample_envelope(1, 1);
        s.put(known.id, Bytes::from_static(b"known")).await.unwrap();
        data.insert(&known, &sample_entries(&known, "default", 0))
            .await
            .unwrap();
        age(&s.file_of(known.id).1, 2 * hour);
        // Unknown and old (a crash before the envelope): removed.
        let (old, young) = (MessageId(2), MessageId(3));
        s.put(old, Bytes::from_static(b"old")).await.unwrap();
        age(&s.file_of(old).1, 2 * hour);
        // Unknown and young (its envelope may be on its way): kept.
        s.put(young, Bytes::from_static(b"young")).await.unwrap();
        age(&s.file_of(young).1, hour / 2);
        // A temporary file of an interrupted write, old: removed; young: kept.
        let (shard_dir, _) = s.file_of(MessageId(4));
        let tmp_old = shard_dir.join(format!(".{}.1.1.tmp", MessageId(4)));
        let tmp_young = shard_dir.join(format!(".{}.1.2.tmp", MessageId(4)));
        std::fs::write(&tmp_old, b"part").unwrap();
        std::fs::write(&tmp_young, b"part").unwrap();
        age(&tmp_old, 2 * hour);
        // Someone else's file: never touched.
        let foreign = root.join("00").join("README");
        std::fs::write(&foreign, b"not mail").unwrap();
        age(&foreign, 2 * hour);

        let swept = s.sweep_orphans(&*data, hour).await.unwrap();
        assert_eq!(
            swept,
            Swept {
                removed: 2,
                young: 2,
                kept: 1,
                foreign: 1
            }
        );
        assert!(s.get(known.id).await.unwrap().is_some());
        assert_eq!(s.get(old).await.unwrap(), None);
        assert!(s.get(young).await.unwrap().is_some());
        assert!(!tmp_old.exists());
        assert!(tmp_young.exists());
        assert!(foreign.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_sweeping_removes_orphans_that_were_young_at_the_first_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let data: Arc<dyn DataStore> = EmbeddedStore::open(&dir.path().join("data")).unwrap();
        let root = dir.path().join("blobs");
        let s = FsBlobStore::open(&root).await.unwrap();
        // An orphan left just before a restart: young at the first sweep.
        let orphan = MessageId(7);
        s.put(orphan, Bytes::from_static(b"orphan")).await.unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        let task = tokio::spawn(FsBlobStore::keep_sweeping(
            Arc::downgrade(&s),
            data,
            Duration::from_millis(400),
            Duration::from_millis(300),
            move |_, swept| r.lock().unwrap().push(swept.unwrap()),
        ));
        // Until a sweep reports the removal (the file goes during the
        // sweep, the report after it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reports.lock().unwrap().iter().any(|r| r.removed == 1) {
            assert!(Instant::now() < deadline, "the orphan was never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!s.file_of(orphan).1.exists());
        let reports = reports.lock().unwrap().clone();
        assert_eq!(reports[0].young, 1, "young at the first sweep: {reports:?}");
        // The task ends with the store.
        drop(s);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sweeping task ended with its store")
            .unwrap();
    }
}
