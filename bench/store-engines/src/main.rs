//! Ferrymail spool storage-engine benchmark.
//!
//! Models an MTA accepting mail with group commit: per batch, all messages
//! (blob + ~300 B envelope + one ~64 B queue entry per recipient) are written
//! and made durable with ONE commit, then acknowledged. See README.md.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-engines cargo run --release`
//! (options: --reps N, --data DIR, --quick, --only accept,state,recovery,
//!  --cfg redb,redb-b,fjall,fjall-b,seglog)

mod engines;
mod seglog;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use engines::{BlobLog, Engine, Kind, Op, Table};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ENV_LEN: usize = 300;
const QVAL_LEN: usize = 52; // + 12-byte key = 64 bytes per queue entry
const ID_BASE: u64 = 0x0000_0190_0000_0000; // time-ordered-looking message ids

// ------------------------------------------------------------ workload ----

/// Pseudo-random printable bytes (base64 alphabet, like MIME attachments),
/// generated once; blobs/envelopes are slices of it so generation costs
/// nothing during timed sections.
struct Pool(Vec<u8>);

impl Pool {
    fn new() -> Pool {
        const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let v = (0..(1usize << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHA[(x >> 58) as usize]
            })
            .collect();
        Pool(v)
    }
    fn slice(&self, id: u64, len: usize) -> &[u8] {
        let start = (id.wrapping_mul(7919) % (self.0.len() - len) as u64) as usize;
        &self.0[start..start + len]
    }
    fn envelope(&self, id: u64, loc: (u64, u32)) -> [u8; ENV_LEN] {
        let mut e = [0u8; ENV_LEN];
        e[0..8].copy_from_slice(&id.to_be_bytes());
        e[8..16].copy_from_slice(&loc.0.to_be_bytes());
        e[16..20].copy_from_slice(&loc.1.to_be_bytes());
        e[20..].copy_from_slice(self.slice(id ^ 0x55, ENV_LEN - 20));
        e
    }
    fn qval(&self, id: u64, due: u64) -> [u8; QVAL_LEN] {
        let mut v = [0u8; QVAL_LEN];
        v[0..8].copy_from_slice(&due.to_be_bytes());
        v[8..12].copy_from_slice(&0u32.to_be_bytes()); // attempts
        v[12..].copy_from_slice(self.slice(id ^ 0xAA, QVAL_LEN - 12));
        v
    }
}

fn qkey(id: u64, rcpt: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[0..8].copy_from_slice(&id.to_be_bytes());
    k[8..12].copy_from_slice(&rcpt.to_be_bytes());
    k
}

#[derive(Clone, Copy)]
struct Cfg {
    kind: Kind,
    /// Variant (b): blobs in a separate seglog (2 fsyncs per batch).
    split: bool,
}

impl Cfg {
    fn name(&self) -> String {
        match (self.kind, self.split) {
            (Kind::SegLog, _) => "seglog (all in one log)".into(),
            (k, false) => format!("{} (a) all-in-engine", k.name()),
            (k, true) => format!("{} (b) +seglog blobs", k.name()),
        }
    }
    fn slug(&self) -> String {
        format!("{}{}", self.kind.name(), if self.split { "-b" } else { "" })
    }
}

struct Store {
    eng: Box<dyn Engine>,
    blobs: Option<BlobLog>,
}

impl Store {
    fn open(cfg: Cfg, dir: &Path) -> Res<Store> {
        let eng = engines::open(cfg.kind, &dir.join("engine"))?;
        let blobs = if cfg.split {
            Some(BlobLog::open(&dir.join("blobs"))?)
        } else {
            None
        };
        Ok(Store { eng, blobs })
    }

    /// One group commit: all messages of the batch durable on return.
    fn accept(&mut self, pool: &Pool, ids: &[u64], blob_len: usize) -> Res<()> {
        let blobs: Vec<&[u8]> = ids.iter().map(|&id| pool.slice(id, blob_len)).collect();
        let mut locs = Vec::new();
        if let Some(bl) = &mut self.blobs {
            bl.append_batch(&blobs, &mut locs)?; // fsync #1: blobs durable first
        }
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let envs: Vec<[u8; ENV_LEN]> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| pool.envelope(id, locs.get(i).copied().unwrap_or((0, 0))))
            .collect();
        let qkeys: Vec<[u8; 12]> = ids.iter().map(|&id| qkey(id, 0)).collect();
        let qvals: Vec<[u8; QVAL_LEN]> = ids.iter().map(|&id| pool.qval(id, id)).collect();
        let mut ops = Vec::with_capacity(ids.len() * 3);
        for i in 0..ids.len() {
            if self.blobs.is_none() {
                ops.push(Op::Put(Table::Blob, &keys[i], blobs[i]));
            }
            ops.push(Op::Put(Table::Env, &keys[i], &envs[i]));
            ops.push(Op::Put(Table::Q, &qkeys[i], &qvals[i]));
        }
        self.eng.commit(&ops) // the (or 2nd) fsync
    }
}

// ------------------------------------------------------------- helpers ----

/// (write_bytes - cancelled_write_bytes) of this process (all threads).
fn disk_writes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| {
                l.strip_prefix(k)
                    .map(|v| v.trim().parse::<u64>().unwrap_or(0))
            })
            .unwrap_or(0)
    };
    get("write_bytes:").saturating_sub(get("cancelled_write_bytes:"))
}

fn fresh_dir(p: &Path) -> Res<()> {
    if p.exists() {
        std::fs::remove_dir_all(p)?;
    }
    std::fs::create_dir_all(p)?;
    Ok(())
}

/// Let the disk go quiet before a timed section: write back everything dirty
/// (incl. the previous run's deletes/discards) so runs do not bleed into each
/// other.
fn quiesce() {
    unsafe { libc::sync() };
    std::thread::sleep(std::time::Duration::from_millis(50));
}

fn walk(p: &Path, f: &mut impl FnMut(&Path, &std::fs::Metadata)) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if let Ok(md) = std::fs::symlink_metadata(&path) {
                if md.is_dir() {
                    walk(&path, f);
                } else {
                    f(&path, &md);
                }
            }
        }
    }
}

/// Allocated bytes on disk.
fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    walk(p, &mut |_, md| n += md.blocks() * 512);
    n
}

/// Drop the directory's files from the page cache (no root needed; we cannot
/// write /proc/sys/vm/drop_caches here). The host's cache may still be warm.
fn evict(p: &Path) {
    use std::os::fd::AsRawFd;
    walk(p, &mut |path, _| {
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.sync_all();
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    });
}

fn copy_dir(from: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{:.0}", x)
    } else {
        format!("{:.1}", x)
    }
}

/// "median (min–max)"
fn fmt_spread(v: &mut [f64]) -> String {
    let m = median(v);
    format!(
        "{} ({}–{})",
        fmt_rate(m),
        fmt_rate(v[0]),
        fmt_rate(v[v.len() - 1])
    )
}

// ------------------------------------------------------ 1. accept path ----

struct AcceptOut {
    rate: f64,
    wa: f64,
}

fn run_accept(
    pool: &Pool,
    cfg: Cfg,
    dir: &Path,
    blob_len: usize,
    batch: usize,
    n: usize,
) -> Res<AcceptOut> {
    fresh_dir(dir)?;
    let ids: Vec<u64> = (0..n as u64).map(|i| ID_BASE + i).collect();
    quiesce();
    let w0 = disk_writes();
    let mut st = Store::open(cfg, dir)?;
    let t0 = Instant::now();
    for chunk in ids.chunks(batch) {
        st.accept(pool, chunk, blob_len)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    st.eng.settle()?;
    drop(st);
    let written = disk_writes() - w0;
    let logical = (n * (blob_len + ENV_LEN + 8 + 12 + QVAL_LEN + 8)) as f64;
    Ok(AcceptOut {
        rate: n as f64 / secs,
        wa: written as f64 / logical,
    })
}

// ------------------------------------------------ 2. state change path ----

struct StateOut {
    defer: f64,
    complete: f64,
    scan_after: f64,
}

fn run_state(pool: &Pool, cfg: Cfg, dir: &Path, n: usize) -> Res<StateOut> {
    fresh_dir(dir)?;
    let ids: Vec<u64> = (0..n as u64).map(|i| ID_BASE + i).collect();
    let mut st = Store::open(cfg, dir)?;
    for chunk in ids.chunks(1000) {
        st.accept(pool, chunk, 1024)?; // setup, untimed
    }
    quiesce();
    // Defer: rewrite every entry once (new due time), 256 per durable commit.
    let t0 = Instant::now();
    for chunk in ids.chunks(256) {
        let keys: Vec<[u8; 12]> = chunk.iter().map(|&id| qkey(id, 0)).collect();
        let vals: Vec<[u8; QVAL_LEN]> = chunk.iter().map(|&id| pool.qval(id, id + 900)).collect();
        let ops: Vec<Op> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| Op::Put(Table::Q, k, v))
            .collect();
        st.eng.commit(&ops)?;
    }
    let defer = n as f64 / t0.elapsed().as_secs_f64();
    quiesce();
    // Complete: delete entry + envelope + blob, 256 per durable commit.
    let t0 = Instant::now();
    for chunk in ids.chunks(256) {
        let qk: Vec<[u8; 12]> = chunk.iter().map(|&id| qkey(id, 0)).collect();
        let k8: Vec<[u8; 8]> = chunk.iter().map(|id| id.to_be_bytes()).collect();
        let mut ops = Vec::with_capacity(chunk.len() * 3);
        for i in 0..chunk.len() {
            ops.push(Op::Del(Table::Q, &qk[i]));
            ops.push(Op::Del(Table::Env, &k8[i]));
            match &mut st.blobs {
                None => ops.push(Op::Del(Table::Blob, &k8[i])),
                Some(bl) => bl.delete(1024), // accounting only; see BlobLog
            }
        }
        st.eng.commit(&ops)?;
    }
    let complete = n as f64 / t0.elapsed().as_secs_f64();
    // Scan the (now empty) entry table right away: what a scheduler pays
    // while deleted entries are still tombstones (LSM) or freed pages (redb).
    let t0 = Instant::now();
    let (left, _) = st.eng.scan(Table::Q)?;
    let scan_after = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(left, 0, "entries left after complete");
    Ok(StateOut {
        defer,
        complete,
        scan_after,
    })
}

// ---------------------------------------------------------- 3. recovery ----

/// Child process: bulk-load `n` queue entries + envelopes, durable commits
/// of 10,000 messages, then exit cleanly or abort() (simulated crash).
fn populate_child(kind: Kind, dir: &Path, n: usize, crash: bool) -> Res<()> {
    let pool = Pool::new();
    fresh_dir(dir)?;
    let mut eng = engines::open(kind, dir)?;
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..n as u64).map(|i| ID_BASE + i).collect();
    for chunk in ids.chunks(10_000) {
        let k8: Vec<[u8; 8]> = chunk.iter().map(|id| id.to_be_bytes()).collect();
        let envs: Vec<[u8; ENV_LEN]> = chunk.iter().map(|&id| pool.envelope(id, (0, 0))).collect();
        let qk: Vec<[u8; 12]> = chunk.iter().map(|&id| qkey(id, 0)).collect();
        let qv: Vec<[u8; QVAL_LEN]> = chunk.iter().map(|&id| pool.qval(id, id)).collect();
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for i in 0..chunk.len() {
            ops.push(Op::Put(Table::Env, &k8[i], &envs[i]));
            ops.push(Op::Put(Table::Q, &qk[i], &qv[i]));
        }
        eng.commit(&ops)?;
    }
    println!("{}", t0.elapsed().as_secs_f64());
    use std::io::Write;
    std::io::stdout().flush()?;
    if crash {
        std::process::abort();
    }
    drop(eng);
    Ok(())
}

fn spawn_populate(kind: Kind, dir: &Path, n: usize, crash: bool) -> Res<f64> {
    let out = Command::new(std::env::current_exe()?)
        .args([
            "__populate",
            kind.name(),
            dir.to_str().unwrap(),
            &n.to_string(),
        ])
        .arg(if crash { "crash" } else { "clean" })
        .output()?;
    if !crash && !out.status.success() {
        return Err(format!("populate failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.trim().parse::<f64>().map_err(|_| {
        format!(
            "populate output {s:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?)
}

/// Open + full scan of the queue-entry table; returns (open s, scan s).
fn reopen_scan(kind: Kind, dir: &Path, n: usize) -> Res<(f64, f64)> {
    evict(dir);
    let t0 = Instant::now();
    let eng = engines::open(kind, dir)?;
    let t_open = t0.elapsed().as_secs_f64();
    let (rows, _) = eng.scan(Table::Q)?;
    let t_all = t0.elapsed().as_secs_f64();
    assert_eq!(rows as usize, n, "{} lost entries", kind.name());
    drop(eng);
    Ok((t_open, t_all - t_open))
}

/// Median latency (ms) of a 4 KiB append + sync_data on the data dir's disk.
fn fsync_probe(dir: &Path) -> Res<f64> {
    use std::io::Write;
    let p = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&p)?;
    let buf = [7u8; 4096];
    let mut v: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&buf).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(median(&mut v))
}

// ---------------------------------------------------------------- main ----

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__populate") {
        let kind = Kind::parse(&args[2]).ok_or("kind")?;
        return populate_child(
            kind,
            Path::new(&args[3]),
            args[4].parse()?,
            args[5] == "crash",
        );
    }
    let mut reps = 5usize;
    let mut data = PathBuf::from("/tmp/store-engines-data");
    let mut quick = false;
    let mut only: Vec<String> = vec!["accept".into(), "state".into(), "recovery".into()];
    let mut cfg_filter: Option<Vec<String>> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().ok_or("--reps N")?.parse()?,
            "--data" => data = PathBuf::from(it.next().ok_or("--data DIR")?),
            "--quick" => quick = true,
            "--cfg" => {
                cfg_filter = Some(
                    it.next()
                        .ok_or("--cfg LIST")?
                        .split(',')
                        .map(String::from)
                        .collect::<Vec<_>>(),
                )
            }
            "--only" => {
                only = it
                    .next()
                    .ok_or("--only LIST")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            _ => return Err(format!("unknown argument {a}; see src/main.rs header").into()),
        }
    }
    let div = if quick { 20 } else { 1 };
    std::fs::create_dir_all(&data)?;
    let pool = Pool::new();
    let t_start = Instant::now();
    let cfgs: Vec<Cfg> = [
        Cfg {
            kind: Kind::Redb,
            split: false,
        },
        Cfg {
            kind: Kind::Redb,
            split: true,
        },
        Cfg {
            kind: Kind::Fjall,
            split: false,
        },
        Cfg {
            kind: Kind::Fjall,
            split: true,
        },
        Cfg {
            kind: Kind::SegLog,
            split: false,
        },
    ]
    .into_iter()
    .filter(|c| cfg_filter.as_ref().is_none_or(|f| f.contains(&c.slug())))
    .collect();
    println!(
        "# Ferrymail spool engine benchmark ({} reps, medians; data dir {})",
        reps,
        data.display()
    );
    println!(
        "# redb 4.6.0, fjall 3.1.13; {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "# fsync probe on the data dir: 4 KiB append + sync_data = {:.3} ms median",
        fsync_probe(&data)?
    );

    if only.iter().any(|s| s == "accept") {
        // (blob size, batch, messages)
        let cells: Vec<(usize, usize, usize)> = vec![
            // 10,000 rather than 20,000 at batch 1: sequential fsyncs, and the
            // whole run must stay under ~10 minutes.
            (1024, 1, 10_000 / div),
            (1024, 8, 20_000 / div),
            (1024, 32, 20_000 / div),
            (100 * 1024, 1, 3_000 / div),
            (100 * 1024, 8, 3_000 / div),
            (100 * 1024, 32, 3_000 / div),
        ];
        let mut res = vec![vec![(Vec::new(), Vec::new()); cells.len()]; cfgs.len()];
        // Cell-major, configs round-robin within a rep: the disk of this VM
        // drifts over minutes, so engines compared in one column are measured
        // close together in time.
        for (xi, &(bl, b, n)) in cells.iter().enumerate() {
            for rep in 0..reps {
                for (ci, cfg) in cfgs.iter().enumerate() {
                    let o = run_accept(
                        &pool,
                        *cfg,
                        &data.join(format!("accept-{}", cfg.slug())),
                        bl,
                        b,
                        n,
                    )?;
                    eprintln!(
                        "accept rep{rep} {:28} blob={:6} batch={:2} n={:5}: {:8.0} msg/s  WA {:.2}",
                        cfg.name(),
                        bl,
                        b,
                        n,
                        o.rate,
                        o.wa
                    );
                    res[ci][xi].0.push(o.rate);
                    res[ci][xi].1.push(o.wa);
                }
            }
        }
        for cfg in &cfgs {
            let _ = std::fs::remove_dir_all(data.join(format!("accept-{}", cfg.slug())));
        }
        println!(
            "\n## 1. Accept path: durable messages/s, median (min–max) (1 envelope + 1 queue entry per message; one group commit per batch)"
        );
        let hdr: Vec<String> = cells
            .iter()
            .map(|&(bl, b, n)| format!("{} KiB b{} (n={})", bl / 1024, b, n))
            .collect();
        println!("| engine | fsyncs/batch | {} |", hdr.join(" | "));
        println!("|---|---|{}", "---:|".repeat(cells.len()));
        for (ci, cfg) in cfgs.iter().enumerate() {
            let f = if cfg.split { "2" } else { "1" };
            let row: Vec<String> = res[ci].iter_mut().map(|(r, _)| fmt_spread(r)).collect();
            println!("| {} | {} | {} |", cfg.name(), f, row.join(" | "));
        }
        println!(
            "\n## 1b. Accept path: disk bytes written / logical bytes (write amplification; fjall memtables flushed at the end, compaction not included)"
        );
        println!("| engine | {} |", hdr.join(" | "));
        println!("|---|{}", "---:|".repeat(cells.len()));
        for (ci, cfg) in cfgs.iter().enumerate() {
            let row: Vec<String> = res[ci]
                .iter_mut()
                .map(|(_, w)| format!("{:.2}", median(w)))
                .collect();
            println!("| {} | {} |", cfg.name(), row.join(" | "));
        }
        eprintln!("[accept done at {:.0} s]", t_start.elapsed().as_secs_f64());
    }

    if only.iter().any(|s| s == "state") {
        let n = 100_000 / div;
        let mut res = vec![(Vec::new(), Vec::new(), Vec::new()); cfgs.len()];
        for rep in 0..reps {
            for (ci, cfg) in cfgs.iter().enumerate() {
                let o = run_state(&pool, *cfg, &data.join(format!("state-{}", cfg.slug())), n)?;
                eprintln!(
                    "state rep{rep} {:28}: defer {:8.0}/s complete {:8.0}/s scan-after {:.2} ms",
                    cfg.name(),
                    o.defer,
                    o.complete,
                    o.scan_after
                );
                res[ci].0.push(o.defer);
                res[ci].1.push(o.complete);
                res[ci].2.push(o.scan_after);
            }
        }
        for cfg in &cfgs {
            let _ = std::fs::remove_dir_all(data.join(format!("state-{}", cfg.slug())));
        }
        println!(
            "\n## 2. State changes: {n} queued entries (1 KiB blobs), batches of 256, durable commit per batch; median (min–max)"
        );
        println!(
            "| engine | defer (rewrite entry) entries/s | complete (delete entry+envelope+blob) entries/s | scan of emptied entry table, ms |"
        );
        println!("|---|---:|---:|---:|");
        for (ci, cfg) in cfgs.iter().enumerate() {
            println!(
                "| {} | {} | {} | {:.2} |",
                cfg.name(),
                fmt_spread(&mut res[ci].0),
                fmt_spread(&mut res[ci].1),
                median(&mut res[ci].2)
            );
        }
        eprintln!("[state done at {:.0} s]", t_start.elapsed().as_secs_f64());
    }

    if only.iter().any(|s| s == "recovery") {
        let n = 1_000_000 / div;
        let kinds = [Kind::Redb, Kind::Fjall, Kind::SegLog];
        struct R {
            load: f64,
            size: u64,
            clean: Vec<(f64, f64)>,
            crash: Vec<(f64, f64)>,
        }
        let mut rs: Vec<R> = Vec::new();
        for &k in &kinds {
            let clean = data.join(format!("recovery-{}-clean", k.name()));
            let crash = data.join(format!("recovery-{}-crash", k.name()));
            let load = spawn_populate(k, &clean, n, false)?;
            spawn_populate(k, &crash, n, true)?;
            let size = du(&clean);
            eprintln!(
                "recovery {}: loaded {n} entries+envelopes in {load:.2} s, {} MiB on disk",
                k.name(),
                size >> 20
            );
            rs.push(R {
                load,
                size,
                clean: vec![],
                crash: vec![],
            });
        }
        for rep in 0..reps {
            for (ki, &k) in kinds.iter().enumerate() {
                // Each rep opens a fresh copy, so every rep is the FIRST open
                // after the shutdown (fjall/redb tidy up on first open).
                let copy = data.join(format!("recovery-{}-copy", k.name()));
                let first_open = |src: &Path| -> Res<(f64, f64)> {
                    fresh_dir(&copy)?;
                    copy_dir(src, &copy)?;
                    let r = reopen_scan(k, &copy, n)?;
                    std::fs::remove_dir_all(&copy)?;
                    Ok(r)
                };
                let c = first_open(&data.join(format!("recovery-{}-clean", k.name())))?;
                let x = first_open(&data.join(format!("recovery-{}-crash", k.name())))?;
                eprintln!(
                    "recovery rep{rep} {}: clean open {:.3} scan {:.3} | after crash open {:.3} scan {:.3}",
                    k.name(),
                    c.0,
                    c.1,
                    x.0,
                    x.1
                );
                rs[ki].clean.push(c);
                rs[ki].crash.push(x);
            }
        }
        println!(
            "\n## 3. Recovery: {n} queue entries (+{n} envelopes); open + full scan of the entry table, page cache evicted"
        );
        println!(
            "| engine | bulk load s (10k/commit) | on-disk MiB | clean: open s | clean: scan s | clean: total s | after crash: open s | after crash: scan s | after crash: total s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (ki, &k) in kinds.iter().enumerate() {
            let r = &mut rs[ki];
            let m = |v: &Vec<(f64, f64)>, f: fn(&(f64, f64)) -> f64| {
                median(&mut v.iter().map(f).collect::<Vec<_>>())
            };
            println!(
                "| {} | {:.2} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                k.name(),
                r.load,
                r.size as f64 / (1 << 20) as f64,
                m(&r.clean, |x| x.0),
                m(&r.clean, |x| x.1),
                m(&r.clean, |x| x.0 + x.1),
                m(&r.crash, |x| x.0),
                m(&r.crash, |x| x.1),
                m(&r.crash, |x| x.0 + x.1),
            );
        }
        for &k in &kinds {
            let _ = std::fs::remove_dir_all(data.join(format!("recovery-{}-clean", k.name())));
            let _ = std::fs::remove_dir_all(data.join(format!("recovery-{}-crash", k.name())));
        }
        eprintln!(
            "[recovery done at {:.0} s]",
            t_start.elapsed().as_secs_f64()
        );
    }
    println!(
        "\n# total wall time {:.0} s",
        t_start.elapsed().as_secs_f64()
    );
    Ok(())
}
