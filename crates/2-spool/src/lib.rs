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
    pub async fn accept(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError> {
        if self.unified {
            return self
                .data
                .insert_with_contents(envelope, entries, contents)
                .await;
        }
        self.blob.put(envelope.id, contents).await?;
        if let Err(e) = self.data.insert(envelope, entries).await {
            // Best effort: the client will get a 4xx and retry, so do not keep
            // the orphaned contents around.
            let _ = self.blob.delete(envelope.id).await;
            return Err(e);
        }
        Ok(())
    }
}
