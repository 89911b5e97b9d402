//! The key-value engine under the embedded store: fjall, chosen by measurement
//! (see `bench/store-engines/README.md` and ARCHITECTURE.md).
//!
//! This module is the only place that names the engine, so a different engine
//! means rewriting this file, not the store.

use std::collections::BTreeMap;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use crate::store::StoreError;

/// The store's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Contents.
    Blob,
    /// Envelopes.
    Env,
    /// Queue entries.
    Entry,
    /// The claim index.
    Ready,
}

/// One key and its value, as read from the engine.
pub type Row = (Vec<u8>, Vec<u8>);

/// A batch of writes: `None` deletes.
pub type Writes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// Memtable size of the envelope, entry and ready tables. fjall's default is
/// 64 MiB per keyspace; with three busy keyspaces of small records that alone
/// is a few hundred MiB resident under a large queue (a million queued
/// recipients measured 450 MiB resident with it, about 200 MiB with 8 MiB; see
/// BENCHMARKS.md). fjall stores this per keyspace when it creates it, so it
/// applies to new stores only.
const MEMTABLE: u64 = 8 * 1024 * 1024;

/// Memtable size of the contents table. A memtable holds whole message
/// bodies until it is flushed, so fjall's default of 64 MiB showed up in full
/// in the resident size: relaying 3,200 messages of 100 KiB left an otherwise
/// empty server at 188 MiB, and a server with a million queued recipients
/// reached 260 MiB under traffic. With 16 MiB the same relay left 92 MiB, at
/// a cost within this machine's noise (BENCHMARKS.md, issue 3).
const BLOB_MEMTABLE: u64 = 16 * 1024 * 1024;

/// Most journal fjall keeps before it writes out the memtables that hold
/// its oldest part (fjall's default is 512 MiB, its minimum 64 MiB). A
/// start after a crash replays the whole journal, one small record at a
/// time, so this bounds that start. The journal grows past the memtables
/// because a quiet table keeps its memtable, and with it every journal file
/// since that memtable's first write: a million deferrals touch only the
/// entry and claim tables, and left a journal that took seconds to replay.
const MAX_JOURNAL: u64 = 64 * 1024 * 1024;

/// An opened engine with one keyspace per table.
pub struct Engine {
    // Keyspaces drop before the database.
    blob: Keyspace,
    env: Keyspace,
    entry: Keyspace,
    ready: Keyspace,
    db: Database,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Engine {
    /// Opens or creates the engine in `dir`, recovering from its journal.
    pub fn open(dir: &Path) -> Result<Engine, StoreError> {
        // We decide durability per commit (SyncData), not fjall's default of
        // handing the journal to the OS only.
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(MAX_JOURNAL)
            .open()
            .map_err(err)?;
        // Contents use key-value separation: the LSM tree holds pointers and
        // large values go to blob files, so compaction never rewrites bodies.
        let blob = db
            .keyspace("blob", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(BLOB_MEMTABLE)
                    .with_kv_separation(Some(KvSeparationOptions::default()))
            })
            .map_err(err)?;
        // Small records: bounded memtables (see MEMTABLE).
        let small = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE);
        let env = db.keyspace("env", small).map_err(err)?;
        let entry = db.keyspace("entry", small).map_err(err)?;
        let ready = db.keyspace("ready", small).map_err(err)?;
        Ok(Engine {
            blob,
            env,
            entry,
            ready,
            db,
        })
    }

    fn ks(&self, t: Table) -> &Keyspace {
        match t {
            Table::Blob => &self.blob,
            Table::Env => &self.env,
            Table::Entry => &self.entry,
            Table::Ready => &self.ready,
        }
    }

    /// Reads one value.
    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.ks(t).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    /// Every key and value with `prefix`, in key order.
    pub fn prefix(&self, t: Table, prefix: &[u8]) -> Result<Vec<Row>, StoreError> {
        self.ks(t)
            .prefix(prefix)
            .map(|g| {
                let (k, v) = g.into_inner().map_err(err)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Every key with `prefix`, in key order.
    pub fn prefix_keys(&self, t: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.ks(t)
            .prefix(prefix)
            .map(|g| g.key().map(|k| k.to_vec()).map_err(err))
            .collect()
    }

    /// Keys in `[from, to)`, in order. Lazily consumed by the caller's loop.
    pub fn range_keys<'a>(
        &'a self,
        t: Table,
        from: &[u8],
        to: &[u8],
    ) -> Result<impl Iterator<Item = Vec<u8>> + 'a, StoreError> {
        Ok(self
            .ks(t)
            .range(from.to_vec()..to.to_vec())
            .filter_map(|g| g.key().ok().map(|k| k.to_vec())))
    }

    /// Up to `limit` keys from the end of a table, last first.
    pub fn last_keys(&self, t: Table, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.ks(t)
            .iter()
            .rev()
            .take(limit)
            .map(|g| g.key().map(|k| k.to_vec()).map_err(err))
            .collect()
    }

    /// Up to `limit` rows with keys ≥ `from`, in order.
    pub fn range_from(&self, t: Table, from: &[u8], limit: usize) -> Result<Vec<Row>, StoreError> {
        self.ks(t)
            .range(from.to_vec()..)
            .take(limit)
            .map(|g| {
                let (k, v) = g.into_inner().map_err(err)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Writes every table's memtable out to disk and waits for it, so that
    /// the journal holds nothing a restart must replay. Replaying is slow
    /// for a large queue (one record per change, and a million deferrals
    /// left a journal that took seconds to replay); a graceful shutdown
    /// does this instead.
    pub fn flush_memtables(&self) -> Result<(), StoreError> {
        for ks in [&self.blob, &self.env, &self.entry, &self.ready] {
            ks.rotate_memtable_and_wait().map_err(err)?;
        }
        self.db.persist(PersistMode::SyncAll).map_err(err)
    }

    /// Syncs everything committed so far to disk (one fdatasync of the
    /// journal): bounds how much unsynced bookkeeping a machine crash could
    /// take, and leaves nothing for a restart to wait on.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData).map_err(err)
    }

    /// Applies a batch atomically across tables (one journal append). With
    /// `sync` the append is also synced to disk (one fdatasync); without, it
    /// is handed to the operating system only, which survives a crash of
    /// this process but not of the machine, until the next synced commit
    /// (the journal is one append-only file, so syncing a later commit
    /// makes every earlier one durable too). An empty batch is free.
    pub fn commit(
        &self,
        writes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mode = if sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        let mut b = self.db.batch().durability(Some(mode));
        for ((t, k), v) in writes {
            match v {
                Some(v) => b.insert(self.ks(t), k, v),
                None => b.remove(self.ks(t), k),
            }
        }
        b.commit().map_err(err)
    }
}
