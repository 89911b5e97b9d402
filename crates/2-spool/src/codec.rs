//! The on-disk encoding of spool records, shared by every key-value backend.
//!
//! Each record is one format-version byte followed by the postcard encoding of
//! the model type. The version byte lets a later release read records written by
//! an earlier one and migrate them.
//!
//! # Versions
//!
//! * **1**: the first release.
//! * **2**: [`QueueEntry`] gained `notice` (the owed notification, see
//!   [`crate::OwedNotice`]). Postcard is not self-describing, so a version-1
//!   entry is read with its old layout ([`QueueEntryV1`]) and converted
//!   (no notice owed). Envelopes did not change: both versions read alike.
//!
//! Records are rewritten in the current version whenever they change, so old
//! ones disappear as the queue turns over; nothing rewrites them in bulk.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::{EntryKey, Envelope, Lane, Lease, OwedNotice, QueueEntry, UnixMillis};
use crate::store::StoreError;

/// The record format written by this release.
pub const FORMAT_VERSION: u8 = 2;

/// A record type the codec stores, with how to read its older versions.
pub trait Record: Serialize + DeserializeOwned {
    /// Decodes the postcard body of a version-1 record. By default the
    /// layout did not change.
    fn decode_v1(body: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(body)
    }
}

impl Record for Envelope {}

impl Record for OwedNotice {}

impl Record for QueueEntry {
    fn decode_v1(body: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<QueueEntryV1>(body).map(QueueEntry::from)
    }
}

/// A [`QueueEntry`] as format version 1 wrote it: every field in the same
/// order, without `notice`. Kept only to read old records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntryV1 {
    /// See [`QueueEntry::key`].
    pub key: EntryKey,
    /// See [`QueueEntry::queue`].
    pub queue: String,
    /// See [`QueueEntry::schedule`].
    pub schedule: String,
    /// See [`QueueEntry::route`].
    pub route: String,
    /// See [`QueueEntry::lane`].
    pub lane: Lane,
    /// See [`QueueEntry::held`].
    pub held: bool,
    /// See [`QueueEntry::due`].
    pub due: UnixMillis,
    /// See [`QueueEntry::attempts`].
    pub attempts: u32,
    /// See [`QueueEntry::weight`].
    pub weight: i32,
    /// See [`QueueEntry::lease`].
    pub lease: Option<Lease>,
    /// See [`QueueEntry::last_error`].
    pub last_error: Option<String>,
    /// See [`QueueEntry::notify_count`].
    pub notify_count: u32,
}

impl From<QueueEntryV1> for QueueEntry {
    fn from(v: QueueEntryV1) -> QueueEntry {
        QueueEntry {
            key: v.key,
            queue: v.queue,
            schedule: v.schedule,
            route: v.route,
            lane: v.lane,
            held: v.held,
            due: v.due,
            attempts: v.attempts,
            weight: v.weight,
            lease: v.lease,
            last_error: v.last_error,
            notify_count: v.notify_count,
            notice: None,
        }
    }
}

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, value)
}

/// Encodes `value` behind the version byte `version`: only [`encode`] and
/// the tests that write old records use it.
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(version);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_io(value, &mut out).expect("postcard encoding into a Vec");
    out
}

/// Decodes a record written by [`encode`], by this release or an earlier
/// one. `what` names the record in errors.
pub fn decode<T: Record>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    };
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(corrupt),
        Some((1, rest)) => T::decode_v1(rest).map_err(corrupt),
        Some((v, _)) => Err(StoreError::Corrupt {
            what: what.to_string(),
            detail: format!("unknown record format version {v}"),
        }),
        None => Err(StoreError::Corrupt {
            what: what.to_string(),
            detail: "empty record".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{sample_entries, sample_envelope};

    /// A version-1 entry, as the previous release wrote it, still reads,
    /// with no notice owed; a version-1 envelope reads unchanged.
    #[test]
    fn version_1_records_still_decode() {
        let env = sample_envelope(7, 2);
        let mut entry = sample_entries(&env, "q", 5)[1].clone();
        entry.attempts = 3;
        entry.last_error = Some("451 later".into());
        let old = QueueEntryV1 {
            key: entry.key,
            queue: entry.queue.clone(),
            schedule: entry.schedule.clone(),
            route: entry.route.clone(),
            lane: entry.lane,
            held: entry.held,
            due: entry.due,
            attempts: entry.attempts,
            weight: entry.weight,
            lease: entry.lease,
            last_error: entry.last_error.clone(),
            notify_count: entry.notify_count,
        };
        let got: QueueEntry = decode(&encode_as(1, &old), "entry").unwrap();
        assert_eq!(got, entry);
        let got: Envelope = decode(&encode_as(1, &env), "envelope").unwrap();
        assert_eq!(got, env);
        // The current version round-trips, and is not the old layout.
        assert_eq!(encode(&entry)[0], FORMAT_VERSION);
        let back: QueueEntry = decode(&encode(&entry), "entry").unwrap();
        assert_eq!(back, entry);
        assert!(matches!(
            decode::<QueueEntry>(&[9, 0], "entry"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
