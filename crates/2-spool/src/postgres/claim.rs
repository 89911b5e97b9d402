//! One process per node name: the node claim.
//!
//! Nodes sharing a database tell their leases apart by node id, which is
//! derived from the node's name (`server.node-id`). Two processes started
//! with the same name would hold the same leases: each would take the
//! other's entries as its own ("a lease this node already holds is taken
//! over") and both would deliver them. So a node claims its name when it
//! registers: it takes a session-level advisory lock, keyed by the schema
//! and the name's tag, on a connection of its own that it keeps open for as
//! long as the store is. A second process with the same name finds the lock
//! taken and refuses to start.
//!
//! The lock goes when the holder's connection does: at once when the
//! process exits or is killed (its socket closes). When the holder's
//! machine died, the database may not notice for hours (nothing is sent on
//! an idle connection), so the holder runs a query every [`HEARTBEAT`]; a
//! claimant that finds the holder's session silent for longer than
//! `stale` ends that session (`pg_terminate_backend`) and takes the claim.
//! If the claim's own connection is lost (the database restarted), the
//! heartbeat takes the claim again on a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::pg_error;
use super::pool::Pool;
use crate::store::StoreError;

/// How often the holder shows it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A holder silent this long is taken to be gone (six missed heartbeats).
pub const STALE: Duration = Duration::from_secs(30);

/// How long a claimant keeps trying while the lock is held by a live
/// session: long enough for the session of a process that just exited to
/// end (a restart), short enough to fail a start fast.
const WAIT: Duration = Duration::from_secs(3);

/// The claim, held for as long as this value lives (the heartbeat task
/// stops, and the connection closes, when it is dropped).
pub struct NodeClaim {
    task: tokio::task::JoinHandle<()>,
    /// Turns true when another process took the claim (see [`NodeClaim::lost`]).
    lost: tokio::sync::watch::Receiver<bool>,
}

impl NodeClaim {
    /// Completes when another process took this node's claim: it ended
    /// this process's session as silent (a network cut longer than
    /// [`STALE`]) and runs as this node now. Two processes would then take
    /// each other's leases and deliver the same mail, so the server stops.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            if lost.wait_for(|l| *l).await.is_err() {
                // The claim was dropped (the store closed): never lost.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for NodeClaim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The advisory-lock key of node `tag` in the schema the connection uses:
/// a lock is per database, and tests (and some sites) keep several
/// Ferrymail schemas in one database.
pub(crate) async fn lock_key(client: &Client, tag: i32) -> Result<i64, StoreError> {
    let row = client
        .query_one(
            "SELECT hashtextextended('ferrymail node ' || current_schema() || ' ' || $1::int4::text, 0)",
            &[&tag],
        )
        .await
        .map_err(pg_error)?;
    row.try_get(0).map_err(pg_error)
}

/// Takes the lock on `client`, ending a stale holder's session. `Ok(false)`
/// when a live session holds it for longer than [`WAIT`].
async fn take(client: &Client, key: i64, stale: Duration) -> Result<bool, StoreError> {
    let deadline = Instant::now() + WAIT;
    // pg_locks shows a bigint advisory key as its high and low 32 bits.
    let (high, low) = ((key as u64 >> 32) as i64, (key as u64 & 0xffff_ffff) as i64);
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)?;
        if got {
            return Ok(true);
        }
        let holder = client
            .query_opt(
                "SELECT a.pid, extract(epoch FROM now() - a.state_change)::float8
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                    AND l.classid::bigint = $1 AND l.objid::bigint = $2",
                &[&high, &low],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = holder {
            let pid: i32 = row.try_get(0).map_err(pg_error)?;
            let silent: f64 = row
                .try_get::<_, Option<f64>>(1)
                .map_err(pg_error)?
                .unwrap_or(0.0);
            if silent > stale.as_secs_f64() {
                tracing::warn!(
                    pid,
                    silent_s = silent as u64,
                    "node claim: the session holding this node's claim has been silent for longer than {stale:?}; its process is taken to be gone, ending the session"
                );
                client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| {
                        StoreError::Engine(format!(
                            "cannot end the stale session (pid {pid}) holding this node's claim: {}",
                            pg_error(e)
                        ))
                    })?;
                continue;
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Claims node `name` (tag `tag`) for this process, or fails when another
/// live process holds it.
pub async fn claim(
    pool: Arc<Pool>,
    name: &str,
    tag: i32,
    stale: Duration,
) -> Result<NodeClaim, StoreError> {
    let client = pool.connect().await?;
    let key = lock_key(&client, tag).await?;
    if !take(&client, key, stale).await? {
        return Err(StoreError::Engine(format!(
            "node '{name}' is already running: another live process holds its claim in this database. \
             Every process sharing the queue needs a server.node-id of its own (two with one name would \
             deliver each other's mail)"
        )));
    }
    let name = name.to_string();
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut client = client;
        let mut held = true;
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            // Bounded: on a connection whose packets silently vanish, a
            // query would wait for TCP to give up, many minutes.
            let alive = tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await;
            if matches!(alive, Ok(Ok(_))) && held {
                continue;
            }
            if alive.is_err() {
                tracing::warn!(node = %name, "node claim: the database did not answer the heartbeat; reconnecting");
            }
            // The connection is gone (a database restart) or silent, or the
            // claim was lost: claim again, on a new connection if need be.
            if alive.is_err() || client.is_closed() {
                match pool.connect().await {
                    Ok(c) => client = c,
                    Err(e) => {
                        held = false;
                        tracing::warn!(node = %name, error = %e, "node claim: cannot reconnect to renew it; trying again");
                        continue;
                    }
                }
            }
            match take(&client, key, stale).await {
                Ok(true) => {
                    if !held {
                        tracing::info!(node = %name, "node claim: held again");
                    }
                    held = true;
                }
                Ok(false) => {
                    tracing::error!(
                        node = %name,
                        "node claim: another process holds this node's claim; two processes would deliver the same mail, so this one stops"
                    );
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(e) => {
                    held = false;
                    tracing::warn!(node = %name, error = %e, "node claim: cannot renew it; trying again");
                }
            }
        }
    });
    Ok(NodeClaim { task, lost })
}
