//! The change feed: how a node learns, while it runs, what other nodes
//! changed in the shared queue.
//!
//! Every statement that changes entries adds one row per message it touched
//! to the `change` table, in the same transaction (migration 3); ETRN and
//! `queue flush` add a row naming their argument. A node reads the rows
//! other nodes committed since its last read, then the current entries (and
//! envelopes, for the recipient domains) of the messages they name: three or
//! four round trips per read, whatever the number of changes.
//!
//! # Why snapshots, not a sequence watermark
//!
//! The obvious design, "read rows with `seq` above the highest I have seen",
//! loses rows: a sequence value is taken when a transaction inserts its row,
//! not when it commits. Transaction A takes seq 10, transaction B takes 11
//! and commits first; a reader sees 11, moves its watermark to 11, and never
//! reads 10 once A commits. Re-reading a lag window only narrows the hole (a
//! commit held up longer than the window still falls in it) and re-reads
//! every row of the window on every poll.
//!
//! So the feed keeps PostgreSQL snapshots instead. Each row records its
//! writer's transaction id (`xid8`, which never wraps). A read takes the
//! current snapshot `high` and returns the rows whose transaction is *not*
//! visible in the previous read's snapshot `low` but *is* visible in
//! `high`; then `high` becomes the next `low`. A transaction is visible in a
//! snapshot exactly when it had committed when the snapshot was taken, and
//! the snapshots a node takes grow one after the other, so every committed
//! row falls into exactly one read window, however late it commits: no row
//! is skipped and none is read twice. A transaction still running at `high`
//! is simply not visible yet; the next read picks it up. `xid >=
//! pg_snapshot_xmin(low)` lets the `change_xid` index skip everything older.
//!
//! The cost: a long-running transaction anywhere on the server holds every
//! snapshot's `xmin` back, and reads then scan (and filter out) all rows
//! since it began. Pruning bounds that, and Ferrymail's own transactions are
//! single statements.
//!
//! # Pruning
//!
//! Each node samples its snapshots' `xmin` every [`UPKEEP_EVERY`] and
//! deletes rows older than a sample at least [`RETENTION`] old: they were
//! committed before every snapshot taken since, so only a reader whose
//! `low` is older than that could still need them. A reader that has not
//! finished a read for [`crate::FEED_RESUME_LIMIT`] (far less than
//! `RETENTION`) starts over with a new cursor and a full scan instead. The
//! same upkeep updates the node's `last_seen` in the registry.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;

use super::{PgStore, corrupt, entry_from_row, id_from_sql};
use crate::codec::decode;
use crate::model::{Envelope, MessageId, QueueEntry};
use crate::store::{FeedBatch, FeedCursor, StoreError};

/// How long change rows are kept: many times [`crate::FEED_RESUME_LIMIT`],
/// so a node that is still following the feed never finds a row it needs
/// pruned.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// How often a node samples its snapshot horizon, prunes, and tells the
/// registry it is alive.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(60);

/// Prune and heartbeat state of one store object.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// `(when, xmin)` of snapshots read, oldest first, one per
    /// [`UPKEEP_EVERY`].
    samples: VecDeque<(Instant, String)>,
    /// The last upkeep.
    last: Option<Instant>,
}

impl Upkeep {
    /// Whether upkeep is due at `now`; if so records the sample `xmin` and
    /// returns the horizon to prune below, if one is old enough.
    fn due(&mut self, now: Instant, xmin: &str) -> Option<Option<String>> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < UPKEEP_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        self.samples.push_back((now, xmin.to_string()));
        let mut horizon = None;
        while let Some((t, _)) = self.samples.front() {
            if now.duration_since(*t) < RETENTION {
                break;
            }
            horizon = self.samples.pop_front().map(|(_, x)| x);
        }
        Some(horizon)
    }
}

/// The `xmin` of a `pg_snapshot` text (`xmin:xmax:xip,...`).
fn snapshot_xmin(snapshot: &str) -> &str {
    snapshot.split(':').next().unwrap_or("0")
}

/// [`crate::DataStore::feed_read`] for PostgreSQL; see the module docs.
pub(super) async fn read(
    store: &PgStore,
    cursor: &mut FeedCursor,
    limit: usize,
) -> Result<FeedBatch, StoreError> {
    let node = store.node_sql();
    let c = store.pool.get().await?;
    let high: String = match &cursor.high {
        Some(h) => h.clone(),
        None => c
            .run(c.client.query_one(&c.st.feed_snapshot, &[]))
            .await?
            .try_get(0)
            .map_err(|e| corrupt("snapshot", e))?,
    };
    let page = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 5] = [&cursor.low, &high, &cursor.after, &node, &page];
    let rows = c.run(c.client.query(&c.st.feed_page, &params)).await?;
    let more = rows.len() >= limit.max(1);

    let mut batch = FeedBatch {
        more,
        ..FeedBatch::default()
    };
    let mut last = cursor.after;
    let mut ids: Vec<i64> = Vec::new();
    for r in &rows {
        let get = |e| corrupt("change row", e);
        last = r.try_get(0).map_err(get)?;
        let message: Option<i64> = r.try_get(1).map_err(get)?;
        let expedite: Option<String> = r.try_get(2).map_err(get)?;
        match (message, expedite) {
            (Some(m), _) => ids.push(m),
            (None, Some(x)) => batch.expedite.push(x),
            (None, None) => {}
        }
    }
    // First mention order, once each.
    let mut seen = std::collections::HashSet::new();
    ids.retain(|m| seen.insert(*m));

    if !ids.is_empty() {
        let entry_rows = c.run(c.client.query(&c.st.feed_entries, &[&ids])).await?;
        let envelope_rows = c.run(c.client.query(&c.st.feed_envelopes, &[&ids])).await?;
        let mut envelopes: HashMap<MessageId, Envelope> = HashMap::new();
        for r in &envelope_rows {
            let id = id_from_sql(r.try_get(0).map_err(|e| corrupt("envelope", e))?);
            let record: &[u8] = r.try_get(1).map_err(|e| corrupt("envelope", e))?;
            envelopes.insert(id, decode(record, "envelope")?);
        }
        let mut by_message: HashMap<MessageId, Vec<(QueueEntry, String)>> = HashMap::new();
        for r in &entry_rows {
            let e = entry_from_row(r)?;
            let domain = envelopes
                .get(&e.key.message)
                .map(|env| env.rcpt_domain(e.key.rcpt))
                .unwrap_or_default();
            by_message
                .entry(e.key.message)
                .or_default()
                .push((e, domain));
        }
        for id in ids {
            let id = id_from_sql(id);
            let entries = by_message.remove(&id).unwrap_or_default();
            batch.messages.push((id, entries));
        }
    }

    // Only now that everything was read does the cursor move.
    if more {
        cursor.high = Some(high.clone());
        cursor.after = last;
    } else {
        cursor.low = high.clone();
        cursor.high = None;
        cursor.after = 0;
    }

    let due = store
        .upkeep
        .lock()
        .expect("upkeep lock")
        .due(Instant::now(), snapshot_xmin(&high));
    if let Some(horizon) = due {
        if let Some(h) = horizon {
            match c
                .run(
                    c.client
                        .execute("DELETE FROM change WHERE xid < $1::text::xid8", &[&h]),
                )
                .await
            {
                Ok(n) => tracing::debug!(rows = n, "change feed pruned"),
                Err(e) => {
                    tracing::warn!(error = %super::StoreError::from(e), "cannot prune the change feed")
                }
            }
        }
        if let Some(n) = node
            && let Err(e) = c
                .run(c.client.execute(
                    "UPDATE node SET last_seen = now() WHERE node_id = $1",
                    &[&n],
                ))
                .await
        {
            tracing::warn!(error = %super::StoreError::from(e), "cannot update this node's last_seen");
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_prunes_only_below_a_sample_older_than_the_retention() {
        let mut u = Upkeep::default();
        let t0 = Instant::now();
        assert_eq!(
            u.due(t0, "100"),
            Some(None),
            "first read: sample, nothing old"
        );
        assert_eq!(
            u.due(t0 + Duration::from_secs(10), "110"),
            None,
            "not due yet"
        );
        let mut t = t0;
        let mut x = 100;
        // One sample a minute until the first is RETENTION old.
        while t.duration_since(t0) + UPKEEP_EVERY < RETENTION {
            t += UPKEEP_EVERY;
            x += 10;
            assert_eq!(u.due(t, &x.to_string()), Some(None));
        }
        t += UPKEEP_EVERY;
        assert_eq!(u.due(t, "999"), Some(Some("100".to_string())));
        t += UPKEEP_EVERY;
        assert_eq!(u.due(t, "1000"), Some(Some("110".to_string())));
    }

    #[test]
    fn xmin_is_the_first_field_of_a_snapshot() {
        assert_eq!(snapshot_xmin("7301:7305:7301,7303"), "7301");
        assert_eq!(snapshot_xmin("12:12:"), "12");
    }
}
