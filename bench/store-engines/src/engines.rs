//! The three candidate engines behind one tiny interface: an atomic, durable
//! commit of a list of puts/deletes across three tables (blob, envelope,
//! queue entry), plus a full scan of one table.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::Res;
use crate::seglog::SegLog;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Blob = 0,
    Env = 1,
    Q = 2,
}

impl Table {
    fn from_u8(b: u8) -> Table {
        match b {
            0 => Table::Blob,
            1 => Table::Env,
            _ => Table::Q,
        }
    }
}

pub enum Op<'a> {
    Put(Table, &'a [u8], &'a [u8]),
    Del(Table, &'a [u8]),
}

pub trait Engine {
    /// Applies all ops atomically and durably with one commit.
    fn commit(&mut self, ops: &[Op<'_>]) -> Res<()>;
    /// Full scan of one table, touching every key and value:
    /// returns (rows, key+value bytes).
    fn scan(&self, t: Table) -> Res<(u64, u64)>;
    /// Push buffered state to its final place (fjall: flush memtables), so
    /// that write amplification counts it. Not timed.
    fn settle(&self) -> Res<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redb,
    Fjall,
    SegLog,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::SegLog => "seglog",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "redb" => Some(Kind::Redb),
            "fjall" => Some(Kind::Fjall),
            "seglog" => Some(Kind::SegLog),
            _ => None,
        }
    }
}

pub fn open(kind: Kind, dir: &Path) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match kind {
        Kind::Redb => Box::new(RedbEngine::open(dir)?),
        Kind::Fjall => Box::new(FjallEngine::open(dir)?),
        Kind::SegLog => Box::new(SegEngine::open(dir)?),
    })
}

// ---------------------------------------------------------------- redb ----

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const R_BLOB: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blob");
const R_ENV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("env");
const R_Q: TableDefinition<&[u8], &[u8]> = TableDefinition::new("q");

fn rdef(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    match t {
        Table::Blob => R_BLOB,
        Table::Env => R_ENV,
        Table::Q => R_Q,
    }
}

pub struct RedbEngine {
    db: redb::Database,
}

impl RedbEngine {
    fn open(dir: &Path) -> Res<Self> {
        // Database::create opens an existing file (running a repair first if
        // it was not closed cleanly) or creates a new one.
        let db = redb::Database::create(dir.join("spool.redb"))?;
        Ok(RedbEngine { db })
    }
}

impl Engine for RedbEngine {
    fn commit(&mut self, ops: &[Op<'_>]) -> Res<()> {
        // Default durability is Durability::Immediate: commit() returns after
        // the (single, 1-phase + checksum) fsync.
        let tx = self.db.begin_write()?;
        {
            let mut tabs: [Option<redb::Table<&[u8], &[u8]>>; 3] = [None, None, None];
            for op in ops {
                let t = match op {
                    Op::Put(t, ..) | Op::Del(t, ..) => *t,
                };
                let slot = &mut tabs[t as usize];
                if slot.is_none() {
                    *slot = Some(tx.open_table(rdef(t))?);
                }
                let tab = slot.as_mut().unwrap();
                match op {
                    Op::Put(_, k, v) => {
                        tab.insert(*k, *v)?;
                    }
                    Op::Del(_, k) => {
                        tab.remove(*k)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn scan(&self, t: Table) -> Res<(u64, u64)> {
        let rtx = self.db.begin_read()?;
        let tab = match rtx.open_table(rdef(t)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
            Err(e) => return Err(e.into()),
        };
        let (mut n, mut b) = (0u64, 0u64);
        for r in tab.iter()? {
            let (k, v) = r?;
            n += 1;
            b += (k.value().len() + v.value().len()) as u64;
        }
        Ok((n, b))
    }
}

// --------------------------------------------------------------- fjall ----

use fjall::{KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

pub struct FjallEngine {
    // Keyspaces first so they drop before the database handle.
    ks: [fjall::Keyspace; 3],
    db: fjall::Database,
}

impl FjallEngine {
    fn open(dir: &Path) -> Res<Self> {
        // manual_journal_persist(true): we choose persistence per batch
        // (PersistMode::SyncData), not the default "flush to OS buffers".
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()?;
        // Blobs: key-value separation (large values go to blob files, the
        // LSM tree only holds pointers), which is fjall's mode for big values.
        let blob = db.keyspace("blob", || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        let env = db.keyspace("env", KeyspaceCreateOptions::default)?;
        let q = db.keyspace("q", KeyspaceCreateOptions::default)?;
        Ok(FjallEngine {
            ks: [blob, env, q],
            db,
        })
    }
}

impl Engine for FjallEngine {
    fn commit(&mut self, ops: &[Op<'_>]) -> Res<()> {
        // One cross-keyspace atomic batch = one journal append + one fdatasync.
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        for op in ops {
            match op {
                Op::Put(t, k, v) => b.insert(&self.ks[*t as usize], *k, *v),
                Op::Del(t, k) => b.remove(&self.ks[*t as usize], *k),
            }
        }
        b.commit()?;
        Ok(())
    }

    fn settle(&self) -> Res<()> {
        for ks in &self.ks {
            ks.rotate_memtable_and_wait()?; // #[doc(hidden)] but public
        }
        Ok(())
    }

    fn scan(&self, t: Table) -> Res<(u64, u64)> {
        let (mut n, mut b) = (0u64, 0u64);
        for g in self.ks[t as usize].iter() {
            let (k, v) = g.into_inner()?;
            n += 1;
            b += (k.len() + v.len()) as u64;
        }
        Ok((n, b))
    }
}

// -------------------------------------------------------------- seglog ----

/// Everything in one append-only log; the index lives in memory and is
/// rebuilt by replaying the whole log on open. Queue entries are held in
/// memory in full; envelopes and blobs only as (offset, len) locators.
/// Deletes append tombstones; space is never reclaimed here (a real design
/// needs segment rotation + compaction, not modelled).
pub struct SegEngine {
    log: SegLog,
    q: BTreeMap<Box<[u8]>, Box<[u8]>>,
    locs: [Locs; 2],
}

/// Key -> (value offset in the log, value length).
type Locs = HashMap<Box<[u8]>, (u64, u32)>;

// Record: [table u8][op u8 (0=put,1=del)][klen u16 LE][vlen u32 LE][key][value]
const REC_HDR: usize = 8;

impl SegEngine {
    fn open(dir: &Path) -> Res<Self> {
        let mut q = BTreeMap::new();
        let mut locs: [Locs; 2] = [HashMap::new(), HashMap::new()];
        let log = SegLog::open(&dir.join("spool.seglog"), |base, p| {
            let mut i = 0;
            while i + REC_HDR <= p.len() {
                let t = Table::from_u8(p[i]);
                let del = p[i + 1] == 1;
                let kl = u16::from_le_bytes([p[i + 2], p[i + 3]]) as usize;
                let vl = u32::from_le_bytes(p[i + 4..i + 8].try_into().unwrap()) as usize;
                let k = &p[i + REC_HDR..i + REC_HDR + kl];
                let voff = i + REC_HDR + kl;
                apply(
                    &mut q,
                    &mut locs,
                    t,
                    del,
                    k,
                    &p[voff..voff + vl],
                    base + voff as u64,
                );
                i = voff + vl;
            }
        })?;
        Ok(SegEngine { log, q, locs })
    }
}

fn apply(
    q: &mut BTreeMap<Box<[u8]>, Box<[u8]>>,
    locs: &mut [Locs; 2],
    t: Table,
    del: bool,
    k: &[u8],
    v: &[u8],
    voff: u64,
) {
    match (t, del) {
        (Table::Q, false) => {
            q.insert(k.into(), v.into());
        }
        (Table::Q, true) => {
            q.remove(k);
        }
        (t, false) => {
            locs[t as usize].insert(k.into(), (voff, v.len() as u32));
        }
        (t, true) => {
            locs[t as usize].remove(k);
        }
    }
}

impl Engine for SegEngine {
    fn commit(&mut self, ops: &[Op<'_>]) -> Res<()> {
        let base = self.log.payload_base();
        let buf = self.log.begin();
        let mut offs = Vec::with_capacity(ops.len());
        for op in ops {
            let (t, del, k, v): (Table, bool, &[u8], &[u8]) = match op {
                Op::Put(t, k, v) => (*t, false, k, v),
                Op::Del(t, k) => (*t, true, k, &[]),
            };
            buf.push(t as u8);
            buf.push(del as u8);
            buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(k);
            // buf[0..12] is the frame header; payload byte j lands at base + j.
            offs.push(base + (buf.len() - 12) as u64);
            buf.extend_from_slice(v);
        }
        self.log.commit()?;
        // Index is updated only after the batch is durable.
        for (op, voff) in ops.iter().zip(offs) {
            match op {
                Op::Put(t, k, v) => apply(&mut self.q, &mut self.locs, *t, false, k, v, voff),
                Op::Del(t, k) => apply(&mut self.q, &mut self.locs, *t, true, k, &[], 0),
            }
        }
        Ok(())
    }

    fn scan(&self, t: Table) -> Res<(u64, u64)> {
        let (mut n, mut b) = (0u64, 0u64);
        match t {
            Table::Q => {
                for (k, v) in &self.q {
                    n += 1;
                    b += (k.len() + v.len()) as u64;
                }
            }
            t => {
                for (k, (_, l)) in &self.locs[t as usize] {
                    n += 1;
                    b += k.len() as u64 + *l as u64;
                }
            }
        }
        Ok((n, b))
    }
}

/// Blob store for variant (b): blobs only, in their own append-only log;
/// one `sync_data` per batch. Returns (offset, len) locators that go into the
/// envelope. Deleting a blob is in-memory accounting only (live bytes per
/// segment; a segment file would be unlinked once empty).
pub struct BlobLog {
    log: SegLog,
    pub live_bytes: u64,
}

impl BlobLog {
    pub fn open(dir: &Path) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let log = SegLog::open(&dir.join("blobs.seglog"), |_, _| {})?;
        Ok(BlobLog { log, live_bytes: 0 })
    }

    pub fn append_batch(&mut self, blobs: &[&[u8]], locs: &mut Vec<(u64, u32)>) -> Res<()> {
        locs.clear();
        let base = self.log.payload_base();
        let buf = self.log.begin();
        for b in blobs {
            locs.push((base + (buf.len() - 12) as u64, b.len() as u32));
            buf.extend_from_slice(b);
        }
        self.log.commit()?;
        self.live_bytes += blobs.iter().map(|b| b.len() as u64).sum::<u64>();
        Ok(())
    }

    pub fn delete(&mut self, len: u32) {
        self.live_bytes -= len as u64;
    }

    #[allow(dead_code)]
    pub fn len(&self) -> u64 {
        self.log.len()
    }
}
