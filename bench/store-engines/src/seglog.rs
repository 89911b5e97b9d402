//! A minimal append-only segment log: one file, batches appended as framed
//! records, one `File::sync_data` per batch.
//!
//! Frame: `[magic u32 LE][payload_len u32 LE][crc32(payload) u32 LE][payload]`.
//! A batch is one frame, so a batch is atomic: on open, the file is scanned
//! frame by frame and a torn or corrupt tail frame is cut off.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::Path;

use crate::Res;

const MAGIC: u32 = 0xFE77_10C0;
const HDR: usize = 12;

pub struct SegLog {
    file: File,
    len: u64,
    buf: Vec<u8>,
}

impl SegLog {
    /// Opens (or creates) the log, calling `f(payload_file_offset, payload)`
    /// for every intact frame, in order.
    pub fn open(path: &Path, mut f: impl FnMut(u64, &[u8])) -> Res<SegLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut good = 0u64;
        {
            let mut r = BufReader::with_capacity(1 << 20, &mut file);
            let mut hdr = [0u8; HDR];
            let mut payload = Vec::new();
            loop {
                if good + HDR as u64 > file_len || r.read_exact(&mut hdr).is_err() {
                    break;
                }
                let magic = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
                let plen = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
                if magic != MAGIC || good + (HDR + plen) as u64 > file_len {
                    break;
                }
                payload.resize(plen, 0);
                if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                    break;
                }
                f(good + HDR as u64, &payload);
                good += (HDR + plen) as u64;
            }
        }
        if good != file_len {
            file.set_len(good)?; // drop a torn tail
            file.sync_all()?;
        }
        Ok(SegLog {
            file,
            len: good,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// Starts a new batch; append record bytes to the returned buffer.
    pub fn begin(&mut self) -> &mut Vec<u8> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; HDR]);
        &mut self.buf
    }

    /// File offset at which byte `i` of the current payload will land.
    pub fn payload_base(&self) -> u64 {
        self.len + HDR as u64
    }

    /// Writes the batch with one `write` and makes it durable with one
    /// `sync_data`. Returns the file offset of the payload.
    pub fn commit(&mut self) -> Res<u64> {
        let plen = (self.buf.len() - HDR) as u32;
        let crc = crc32fast::hash(&self.buf[HDR..]);
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&plen.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        // The file is opened without O_APPEND; we track the end ourselves.
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&self.buf, self.len)?;
        self.file.sync_data()?;
        let base = self.len + HDR as u64;
        self.len += self.buf.len() as u64;
        Ok(base)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    #[allow(dead_code)]
    pub fn flush(&mut self) -> Res<()> {
        self.file.flush()?;
        Ok(())
    }
}
