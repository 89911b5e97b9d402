//! The on-disk encoding of spool records, shared by every key-value backend.
//!
//! Each record is one format-version byte followed by the postcard encoding of
//! the model type. The version byte lets a later release read records written by
//! an earlier one and migrate them.

use serde::{Serialize, de::DeserializeOwned};

use crate::store::StoreError;

/// The record format written by this release.
pub const FORMAT_VERSION: u8 = 1;

/// Encodes a record with its version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_io(value, &mut out).expect("postcard encoding into a Vec");
    out
}

/// Decodes a record written by [`encode`]. `what` names the record in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt {
                what: what.to_string(),
                detail: e.to_string(),
            })
        }
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
