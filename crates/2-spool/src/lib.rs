//! The spool: where an accepted message becomes durable, and where its queue state
//! lives until every recipient has an outcome.
//!
//! Two stores sit behind two traits ([`DataStore`] and [`BlobStore`]), because
//! their access patterns differ: envelopes and per-recipient entries are small and
//! rewritten on every attempt, while contents are large, written once and read
//! rarely. [`Spool`] puts them together for the accept path.
//!
//! Backends: [`embedded`] (both roles, one node), [`postgres`] (both roles,
//! shared by several nodes) and [`fs`] (contents only, one file per message).

pub mod codec;
pub mod conformance;
pub mod embedded;
pub mod fs;
pub mod model;
pub mod orcpt;
pub mod postgres;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;

pub use model::*;
pub use store::*;

/// The two stores as the rest of Ferrymail uses them.
#[derive(Clone)]
pub struct Spool {
    /// Envelopes and queue entries.
    pub data: Arc<dyn DataStore>,
    /// Message contents.
    pub blob: Arc<dyn BlobStore>,
    /// `data` and `blob` are one store, which takes a message and its contents
    /// in a single commit ([`DataStore::insert_with_contents`]).
    pub unified: bool,
}

impl Spool {
    /// Makes a message durable: contents first, then envelope and entries. Only
    /// after this returns may the receiver answer 250.
    ///
    /// Ordering matters for crash safety: an envelope is never durable without its
    /// contents. A crash between the two leaves contents no envelope refers to,
    /// which a start-up sweep may delete (the `fs` store's,
    /// [`fs::FsBlobStore::sweep_orphans`]); it never leaves an entry pointing
    /// at nothing.
    ///
    /// An insert that fails may still have committed: a PostgreSQL connection
    /// can die after the server applied the statement and before its answer
    /// arrived. So a failed insert is followed by a read of the envelope. If
    /// it is there, equal to this one, the message is durable, and this
    /// returns `Ok`: the client
    /// gets its 250 and does not send the message a second time. Contents of
    /// a failed insert are never deleted here: an insert abandoned on a
    /// timeout may still commit, and must not point at nothing; the orphan
    /// sweep takes them (see [`fs::FsBlobStore::sweep_orphans`]).
    pub async fn accept(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError> {
        let inserted = if self.unified {
            self.data
                .insert_with_contents(envelope, entries, contents)
                .await
        } else {
            self.blob.put(envelope.id, contents).await?;
            self.data.insert(envelope, entries).await
        };
        let Err(e) = inserted else { return Ok(()) };
        match self.data.envelope(envelope.id).await {
            // Ours, whole: the same id could be another message's (ids
            // minted again after the clock stepped back), which must not
            // pass for this one.
            Ok(Some(stored)) if stored == *envelope => {
                tracing::warn!(
                    message = %envelope.id,
                    error = %e,
                    "spool insert reported an error but committed; the message is kept"
                );
                Ok(())
            }
            // Not there (yet), another message's, or unknown. The contents
            // stay either way, for the orphan sweep: an insert abandoned on
            // a timeout may still commit, and must find them.
            _ => Err(e),
        }
    }
}
