//! The PostgreSQL store: data and blobs in one database that several
//! Ferrymail nodes share (`[store.<id>] type = "postgresql"`).
//!
//! # Layout
//!
//! Three tables, created and migrated on open ([`schema`]): `blob` (message
//! id → contents as `bytea`), `envelope` (message id → codec-encoded
//! [`Envelope`]) and `entry` (one row per recipient, one column per
//! [`QueueEntry`] field, plus the generated `eligible_at` column and the
//! `entry_ready` index that play the embedded store's `ready` index).
//!
//! # Semantics
//!
//! The same as the embedded store's, checked by the same conformance suite:
//! every operation is one SQL statement ([`sql`]), so each is atomic and
//! durable when it returns, and concurrent operations run on concurrent
//! connections of the [`pool`]. Leases are plain columns compared with the
//! caller's clock (`now`), as in the embedded store: nodes sharing a
//! database need clocks in step to well within a lease (NTP does that).
//! Where the embedded store's single writer serializes everything, here
//! the claims use `SKIP LOCKED`: an entry some other transaction is
//! changing at that very moment is not claimed (the scheduler re-reads
//! it), rather than waited for.
//!
//! The tables have plain names (`blob`, `envelope`, `entry`,
//! `schema_version`): give Ferrymail a database of its own, or a schema of
//! its own through the URL's `options`.
//!
//! # Duplicate ids
//!
//! Inserting a message (or contents) whose id exists fails with a
//! [`StoreError`] instead of overwriting, unlike the embedded store: only
//! here can two writers (two nodes) mint the same id, and the client
//! retrying after a 4xx is better than one message silently replacing
//! another.
//!
//! # Ids and times
//!
//! Message ids are stored with their top bit flipped ([`sql_id`]) so signed
//! `bigint` order is `MessageId` order; node ids are stored bit for bit.
//! Times are clamped to `i64::MAX` milliseconds (year 292 million), and
//! counters to `i32::MAX`.
//!
//! # Connection loss
//!
//! An operation whose connection fails returns a [`StoreError`] (receive
//! answers 4xx; the queue engine retries later) and the next one opens a new
//! connection, so the store follows the database through a restart by
//! itself. An idempotent operation that finds its idle connection was closed
//! while idle (the restart happened in between) runs once more on a new one.

pub mod claim;
pub mod feed;
pub mod pool;
pub mod schema;
pub mod sql;
pub mod tls;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;

use crate::codec::{decode, encode};
use crate::model::*;
use crate::store::*;
use pool::{Failure, Pool};

/// How long a notice owed is its recording node's alone to send unless
/// [`PgStore::set_notice_hold`] says otherwise: the default `cluster.lease`
/// (60 s) plus the default `report.dsn.batch-max-hold` (10 s).
pub const NOTICE_HOLD: std::time::Duration = std::time::Duration::from_secs(70);

/// How far a node's clock may be from the database's before it is warned
/// of (see `PgStore::warn_of_clock_skew`): round trips and NTP's usual
/// error are well below it.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(2);

/// How to reach the database: `[store.<id>]` of type `postgresql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// `postgresql://user:password@host:port/db?params`. libpq's
    /// `sslrootcert=<PEM file>` is understood too (the CA to trust with
    /// `tls`); `options=-csearch_path%3D<schema>` puts the tables in a
    /// schema of their own.
    pub url: String,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Connect with TLS (required, and verified), see [`tls`].
    pub tls: bool,
}

/// The PostgreSQL data and blob store.
pub struct PgStore {
    pool: Arc<Pool>,
    /// This process's claim on its node name, once registered ([`claim`]).
    claim: tokio::sync::Mutex<Option<(String, claim::NodeClaim)>>,
    /// How long the session holding a node's claim may be silent before
    /// another process with that name takes it over: [`claim::STALE`]
    /// (tests shorten it, [`PgStore::set_claim_stale`]).
    claim_stale: std::sync::Mutex<std::time::Duration>,
    /// How long a notice owed that this store object records, or takes
    /// over, is its node's alone to send (migration 4), in milliseconds:
    /// [`NOTICE_HOLD`] unless [`PgStore::set_notice_hold`] says otherwise.
    notice_hold: std::sync::atomic::AtomicU64,
    /// This node once registered ([`DataStore::register_node`]): written
    /// into every change-feed row this store object adds, so the node's own
    /// feed skips them. `None` before (tests, tools): rows name no node.
    node: std::sync::RwLock<Option<i64>>,
    /// Pruning of the change feed and the registry heartbeat.
    upkeep: std::sync::Mutex<feed::Upkeep>,
}

/// A database error as a [`StoreError`], with the server's message when
/// there is one (tokio-postgres's own text is just "db error").
pub fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Engine(format!("PostgreSQL: {}", error_text(&e)))
}

/// A failure to connect, naming where to (without the password).
pub(crate) fn connection_error(target: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Engine(format!(
        "cannot connect to PostgreSQL at {target}: {}",
        error_text(&e)
    ))
}

/// The server's message for a database error; otherwise the error and its
/// causes ("error performing TLS handshake: invalid peer certificate: ...").
fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The message ids in the first column of `rows`: the messages a cancel or
/// a discharge left without entries (`what` names it in an error).
fn message_ids(rows: &[Row], what: &str) -> Result<Vec<MessageId>, StoreError> {
    rows.iter()
        .map(|r| {
            r.try_get::<_, i64>(0)
                .map(id_from_sql)
                .map_err(|e| corrupt(what, e))
        })
        .collect()
}

/// The `bigint` a message id is stored as: the id with its top bit flipped,
/// so that signed order is the id's unsigned order.
pub fn sql_id(id: MessageId) -> i64 {
    (id.0 ^ (1 << 63)) as i64
}

/// Inverse of [`sql_id`].
pub fn id_from_sql(v: i64) -> MessageId {
    MessageId((v as u64) ^ (1 << 63))
}

fn sql_node(n: NodeId) -> i64 {
    n.0 as i64
}

fn sql_time(t: UnixMillis) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn time_from_sql(v: i64) -> UnixMillis {
    u64::try_from(v).unwrap_or(0)
}

fn sql_u32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn sql_lane(l: Lane) -> i16 {
    match l {
        Lane::Pending => 0,
        Lane::Deferred => 1,
    }
}

/// Splits keys into the two arrays the statements take.
fn key_arrays(keys: &[EntryKey]) -> (Vec<i64>, Vec<i32>) {
    keys.iter()
        .map(|k| (sql_id(k.message), sql_u32(k.rcpt)))
        .unzip()
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// Reads an entry selected as [`sql::ENTRY_COLS`].
fn entry_from_row(r: &Row) -> Result<QueueEntry, StoreError> {
    let get = |e: tokio_postgres::Error| corrupt("queue entry row", e);
    let message = id_from_sql(r.try_get(0).map_err(get)?);
    let rcpt: i32 = r.try_get(1).map_err(get)?;
    let lane = match r.try_get::<_, i16>(5).map_err(get)? {
        0 => Lane::Pending,
        1 => Lane::Deferred,
        other => return Err(corrupt("queue entry row", format!("unknown lane {other}"))),
    };
    let owner: Option<i64> = r.try_get(10).map_err(get)?;
    let until: Option<i64> = r.try_get(11).map_err(get)?;
    Ok(QueueEntry {
        key: EntryKey {
            message,
            rcpt: rcpt as u32,
        },
        queue: r.try_get(2).map_err(get)?,
        schedule: r.try_get(3).map_err(get)?,
        route: r.try_get(4).map_err(get)?,
        lane,
        held: r.try_get(6).map_err(get)?,
        due: time_from_sql(r.try_get(7).map_err(get)?),
        attempts: r.try_get::<_, i32>(8).map_err(get)? as u32,
        weight: r.try_get(9).map_err(get)?,
        lease: match (owner, until) {
            (Some(o), Some(u)) => Some(Lease {
                owner: NodeId(o as u64),
                until: time_from_sql(u),
            }),
            _ => None,
        },
        last_error: r.try_get(12).map_err(get)?,
        notify_count: r.try_get::<_, i32>(13).map_err(get)? as u32,
        notice: r
            .try_get::<_, Option<&[u8]>>(14)
            .map_err(get)?
            .map(|b| decode(b, "owed notice"))
            .transpose()?,
    })
}

/// The `notice_slot` column of an owed notice (see migration 2): 0 for the
/// final outcome's, the notify age for a delay notice.
fn sql_slot(slot: NoticeSlot) -> i32 {
    match slot {
        NoticeSlot::Final => 0,
        NoticeSlot::Delay { notify_num } => sql_u32(notify_num.max(1)),
    }
}

/// Runs one operation on a pooled connection: `$c` names the connection in
/// `$op`, an expression giving a tokio-postgres future.
///
/// `retry` is for idempotent operations only: when the connection came from
/// the idle list and was found closed (the database restarted while it was
/// idle), the operation runs once more on a new connection. Running it twice
/// must then be harmless, since it may have been executed before the
/// connection died.
macro_rules! on_conn {
    ($store:ident, retry, |$c:ident| $op:expr) => {{
        let $c = $store.pool.get().await?;
        match $c.run($op).await {
            Err(Failure::Stale(e)) => {
                drop($c);
                tracing::info!(error = %e, "PostgreSQL connection found closed; retrying on a new one");
                let $c = $store.pool.get_new().await?;
                $c.run($op).await.map_err(StoreError::from)
            }
            other => other.map_err(StoreError::from),
        }
    }};
    ($store:ident, once, |$c:ident| $op:expr) => {{
        let $c = $store.pool.get().await?;
        $c.run($op).await.map_err(StoreError::from)
    }};
}

impl PgStore {
    /// Connects, creates or migrates the schema, and returns the store.
    /// Fails if the database cannot be reached now: a node does not start
    /// without its queue. (Once running, it rides out outages: see the
    /// module docs.)
    pub async fn open(options: &PgOptions) -> Result<Arc<PgStore>, StoreError> {
        let (url, root_file) = take_param(&options.url, "sslrootcert");
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Engine(format!("bad PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(pool::CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ferrymail");
        }
        let tls = if options.tls {
            if config.get_ssl_mode() != SslMode::Require {
                config.ssl_mode(SslMode::Require);
            }
            Some(tls::RustlsConnect::new(
                root_file.as_deref().map(std::path::Path::new),
            )?)
        } else {
            if config.get_ssl_mode() == SslMode::Require {
                return Err(StoreError::Engine(
                    "the PostgreSQL URL says sslmode=require: set tls = true in the store's configuration"
                        .into(),
                ));
            }
            config.ssl_mode(SslMode::Disable);
            None
        };
        let target = describe(&config);
        let pool = Pool::new(config, tls, options.pool_size, target);
        let mut client = pool.connect().await?;
        schema::migrate(&mut client).await?;
        pool.give(pool::Pool::ready(client).await?);
        tracing::info!(
            target = %pool.target,
            pool_size = options.pool_size,
            tls = options.tls,
            schema_version = schema::latest(),
            "PostgreSQL store open"
        );
        Ok(Arc::new(PgStore {
            pool: Arc::new(pool),
            claim: tokio::sync::Mutex::new(None),
            claim_stale: std::sync::Mutex::new(claim::STALE),
            notice_hold: std::sync::atomic::AtomicU64::new(NOTICE_HOLD.as_millis() as u64),
            node: std::sync::RwLock::new(None),
            upkeep: std::sync::Mutex::new(feed::Upkeep::default()),
        }))
    }

    /// Shortens how long a claim's holder may be silent before it is taken
    /// over (see [`claim`]), for tests that cannot wait [`claim::STALE`].
    #[doc(hidden)]
    pub fn set_claim_stale(&self, stale: std::time::Duration) {
        *self.claim_stale.lock().expect("claim lock") = stale;
    }

    /// Sets how long a notice owed this node records or takes over stays
    /// its own to send before other nodes take it over: at least the time
    /// its DSN layer may hold one back for batching plus a lease, so that a
    /// live node is never overtaken (`serve` sets `cluster.lease` +
    /// `report.dsn.batch-max-hold`).
    pub fn set_notice_hold(&self, hold: std::time::Duration) {
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self.notice_hold
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Until when a notice recorded or taken at `now` is this node's.
    fn notice_until(&self, now: UnixMillis) -> i64 {
        let hold = self.notice_hold.load(std::sync::atomic::Ordering::Relaxed);
        sql_time(now.saturating_add(hold))
    }

    /// Leases and notice holds are deadlines one node's clock sets and
    /// another's reads: nodes whose clocks disagree by more than what is
    /// left of a lease take each other's live work. The database's clock
    /// is the one all nodes see, so a node compares its own with it when
    /// it registers and warns when they are apart by more than
    /// [`MAX_CLOCK_SKEW`].
    async fn warn_of_clock_skew(&self, name: &str) {
        if let Ok(Some(skew)) = self.clock_skew().await
            && skew.unsigned_abs() > MAX_CLOCK_SKEW.as_millis() as u64
        {
            tracing::warn!(
                node = %name,
                skew_ms = skew,
                "this node's clock and the database's disagree; leases between nodes need clocks within a second or two (NTP)"
            );
        }
    }

    /// This node's clock minus the database's, in milliseconds.
    async fn clock_skew(&self) -> Result<Option<i64>, StoreError> {
        let row = on_conn!(self, retry, |c| c.client.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[]
        ))?;
        let here = now_millis() as i64;
        Ok(row.try_get::<_, i64>(0).ok().map(|there| here - there))
    }

    /// The node change-feed rows are attributed to.
    fn node_sql(&self) -> Option<i64> {
        *self.node.read().expect("node lock")
    }

    async fn insert_impl(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let id = sql_id(envelope.id);
        let record = encode(envelope);
        let n = entries.len();
        let mut cols = EntryColumns::with_capacity(n);
        for e in entries {
            cols.push(e);
        }
        let c = &cols;
        let node = self.node_sql();
        let base: [&(dyn ToSql + Sync); 19] = [
            &id,
            &record,
            &c.message,
            &c.rcpt,
            &c.queue,
            &c.schedule,
            &c.route,
            &c.lane,
            &c.held,
            &c.due,
            &c.attempts,
            &c.weight,
            &c.lease_owner,
            &c.lease_until,
            &c.last_error,
            &c.notify_count,
            &c.notice,
            &c.notice_slot,
            &node,
        ];
        // Not retried: if a first run committed before its connection died,
        // a second one would be refused (the id exists) anyway.
        match contents {
            None => on_conn!(self, once, |conn| conn
                .client
                .execute(&conn.st.insert, &base))?,
            Some(contents) => {
                let mut params: Vec<&(dyn ToSql + Sync)> = base.to_vec();
                params.push(&contents);
                on_conn!(self, once, |conn| conn
                    .client
                    .execute(&conn.st.insert_with_contents, &params))?
            }
        };
        Ok(())
    }
}

/// One array per entry column, for the insert statement's `unnest`.
struct EntryColumns<'a> {
    message: Vec<i64>,
    rcpt: Vec<i32>,
    queue: Vec<&'a str>,
    schedule: Vec<&'a str>,
    route: Vec<&'a str>,
    lane: Vec<i16>,
    held: Vec<bool>,
    due: Vec<i64>,
    attempts: Vec<i32>,
    weight: Vec<i32>,
    lease_owner: Vec<Option<i64>>,
    lease_until: Vec<Option<i64>>,
    last_error: Vec<Option<&'a str>>,
    notify_count: Vec<i32>,
    notice: Vec<Option<Vec<u8>>>,
    notice_slot: Vec<Option<i32>>,
}

impl<'a> EntryColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        EntryColumns {
            message: Vec::with_capacity(n),
            rcpt: Vec::with_capacity(n),
            queue: Vec::with_capacity(n),
            schedule: Vec::with_capacity(n),
            route: Vec::with_capacity(n),
            lane: Vec::with_capacity(n),
            held: Vec::with_capacity(n),
            due: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            weight: Vec::with_capacity(n),
            lease_owner: Vec::with_capacity(n),
            lease_until: Vec::with_capacity(n),
            last_error: Vec::with_capacity(n),
            notify_count: Vec::with_capacity(n),
            notice: Vec::with_capacity(n),
            notice_slot: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, e: &'a QueueEntry) {
        self.message.push(sql_id(e.key.message));
        self.rcpt.push(sql_u32(e.key.rcpt));
        self.queue.push(&e.queue);
        self.schedule.push(&e.schedule);
        self.route.push(&e.route);
        self.lane.push(sql_lane(e.lane));
        self.held.push(e.held);
        self.due.push(sql_time(e.due));
        self.attempts.push(sql_u32(e.attempts));
        self.weight.push(e.weight);
        self.lease_owner.push(e.lease.map(|l| sql_node(l.owner)));
        self.lease_until.push(e.lease.map(|l| sql_time(l.until)));
        self.last_error.push(e.last_error.as_deref());
        self.notify_count.push(sql_u32(e.notify_count));
        self.notice.push(e.notice.as_ref().map(encode));
        self.notice_slot
            .push(e.notice.as_ref().map(|n| sql_slot(n.which())));
    }
}

/// Removes query parameter `key` from `url` (tokio-postgres refuses
/// parameters it does not know) and returns the URL and the decoded value.
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| match p.split_once('=') {
            Some((k, v)) if k == key => {
                value = Some(percent_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), value)
    } else {
        (format!("{base}?{}", kept.join("&")), value)
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `user@host:port/db` of a configuration, for messages and logs.
fn describe(c: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or("?"),
        c.get_dbname().unwrap_or("?")
    )
}

#[async_trait]
impl DataStore for PgStore {
    async fn insert(&self, envelope: &Envelope, entries: &[QueueEntry]) -> Result<(), StoreError> {
        self.insert_impl(envelope, entries, None).await
    }

    async fn insert_with_contents(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError> {
        self.insert_impl(envelope, entries, Some(&contents)).await
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<QueueEntry>, StoreError> {
        let owner = sql_node(claim.owner);
        let lane = sql_lane(claim.lane);
        let now = sql_time(claim.now);
        let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
        let until = sql_time(claim.lease_until);
        let params: [&(dyn ToSql + Sync); 6] = [&owner, &lane, &now, &claim.queue, &limit, &until];
        // Not retried: a second run would lease more entries than returned.
        let rows = on_conn!(self, once, |c| c.client.query(&c.st.claim, &params))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let rank: i64 = r
                    .try_get(sql::ENTRY_COL_COUNT)
                    .map_err(|e| corrupt("claim rank", e))?;
                Ok((rank, entry_from_row(r)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Earliest eligible first, then key order, as the claim index reads.
        out.sort_by_key(|(rank, e)| (*rank, e.key));
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    async fn claim_keys(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (messages, rcpts) = key_arrays(keys);
        let (owner, now, until) = (sql_node(owner), sql_time(now), sql_time(lease_until));
        let params: [&(dyn ToSql + Sync); 5] = [&owner, &messages, &rcpts, &now, &until];
        // Idempotent: a second run by the same owner takes over its own leases.
        let rows = on_conn!(self, retry, |c| c.client.query(&c.st.claim_keys, &params))?;
        let mut got = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // In the order of `keys` (first mention), as the contract says.
        let position: std::collections::HashMap<EntryKey, usize> = keys
            .iter()
            .enumerate()
            .rev()
            .map(|(i, k)| (*k, i))
            .collect();
        got.sort_by_key(|e| position.get(&e.key).copied().unwrap_or(usize::MAX));
        Ok(got)
    }

    /// One statement (`sql::CLAIM_JOB`) instead of three round trips:
    /// claim, envelope, contents.
    async fn claim_job(
        &self,
        owner: NodeId,
        message: MessageId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
        contents: bool,
    ) -> Result<ClaimedJob, StoreError> {
        if keys.is_empty() {
            return Ok(ClaimedJob::default());
        }
        let (messages, rcpts) = key_arrays(keys);
        let (owner, now, until) = (sql_node(owner), sql_time(now), sql_time(lease_until));
        let id = sql_id(message);
        let params: [&(dyn ToSql + Sync); 7] =
            [&owner, &messages, &rcpts, &now, &until, &id, &contents];
        // Idempotent, as claim_keys: a second run takes over its own leases.
        let rows = on_conn!(self, retry, |c| c.client.query(&c.st.claim_job, &params))?;
        let mut job = ClaimedJob {
            entries: Vec::with_capacity(rows.len()),
            envelope: None,
            contents: None,
        };
        if rows.is_empty() {
            return Ok(job);
        }
        let cols = sql::ENTRY_COL_COUNT;
        for r in &rows {
            job.entries.push(entry_from_row(r)?);
            let first: i64 = r.try_get(cols).map_err(|e| corrupt("claim row", e))?;
            if first != 1 {
                continue;
            }
            let record: Option<&[u8]> = r.try_get(cols + 1).map_err(|e| corrupt("envelope", e))?;
            job.envelope = record.map(|b| decode(b, "envelope")).transpose()?;
            if contents {
                let blob: Option<Vec<u8>> =
                    r.try_get(cols + 2).map_err(|e| corrupt("contents", e))?;
                job.contents = Some(blob.map(Bytes::from));
            }
        }
        // In the order of `keys` (first mention), as claim_keys returns them.
        let position: std::collections::HashMap<EntryKey, usize> = keys
            .iter()
            .enumerate()
            .rev()
            .map(|(i, k)| (*k, i))
            .collect();
        job.entries
            .sort_by_key(|e| position.get(&e.key).copied().unwrap_or(usize::MAX));
        Ok(job)
    }

    async fn renew(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        until: UnixMillis,
    ) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let (messages, rcpts) = key_arrays(keys);
        let (owner, until) = (sql_node(owner), sql_time(until));
        let params: [&(dyn ToSql + Sync); 4] = [&owner, &messages, &rcpts, &until];
        let n = on_conn!(self, retry, |c| c.client.execute(&c.st.renew, &params))?;
        Ok(n as usize)
    }

    async fn complete(
        &self,
        owner: NodeId,
        key: EntryKey,
        notice: Option<&OwedNotice>,
    ) -> Result<Removal, StoreError> {
        let (message, rcpt, owner_sql) = (sql_id(key.message), sql_u32(key.rcpt), sql_node(owner));
        if let Some(notice) = notice.filter(|n| n.is_final()) {
            let (record, slot) = (encode(notice), sql_slot(notice.which()));
            let until = self.notice_until(now_millis());
            let params: [&(dyn ToSql + Sync); 6] =
                [&message, &rcpt, &owner_sql, &record, &slot, &until];
            // Not retried: a second run would find the lease released (NotLeased).
            let row = on_conn!(self, once, |c| c
                .client
                .query_opt(&c.st.complete_owing, &params))?;
            let Some(row) = row else {
                return Err(StoreError::NotLeased(key));
            };
            let left: i64 = row.try_get(0).map_err(|e| corrupt("complete", e))?;
            return Ok(Removal {
                remaining: usize::try_from(left).unwrap_or(0),
                contents_removed: false,
            });
        }
        let params: [&(dyn ToSql + Sync); 3] = [&message, &rcpt, &owner_sql];
        // Not retried: a second run would find the entry gone (NotLeased) and
        // lose the count that says whether to delete the contents.
        let row = on_conn!(self, once, |c| c.client.query_one(&c.st.complete, &params))?;
        let left: i64 = row.try_get(0).map_err(|e| corrupt("complete", e))?;
        match usize::try_from(left) {
            // ferrymail_complete removes the contents from this store's blob
            // table with the last entry (migration 3).
            Ok(remaining) => Ok(Removal {
                remaining,
                contents_removed: remaining == 0,
            }),
            Err(_) => Err(StoreError::NotLeased(key)),
        }
    }

    async fn defer(
        &self,
        owner: NodeId,
        key: EntryKey,
        deferral: &Deferral,
    ) -> Result<(), StoreError> {
        let (message, rcpt, owner_sql) = (sql_id(key.message), sql_u32(key.rcpt), sql_node(owner));
        let due = sql_time(deferral.due);
        let notify = sql_u32(deferral.notify_count);
        let notice = deferral.notice.as_ref().map(encode);
        let slot = deferral.notice.as_ref().map(|n| sql_slot(n.which()));
        let until = self.notice_until(now_millis());
        let attempted = i32::from(deferral.attempted);
        let params: [&(dyn ToSql + Sync); 10] = [
            &message,
            &rcpt,
            &owner_sql,
            &due,
            &deferral.last_error,
            &notify,
            &notice,
            &slot,
            &until,
            &attempted,
        ];
        // Not retried: a second run would find the lease released (NotLeased).
        let row = on_conn!(self, once, |c| c.client.query_one(&c.st.defer, &params))?;
        match row.try_get::<_, i64>(0).map_err(|e| corrupt("defer", e))? {
            0 => Err(StoreError::NotLeased(key)),
            _ => Ok(()),
        }
    }

    async fn reroute(
        &self,
        owner: NodeId,
        key: EntryKey,
        routing: &Routing,
        due: UnixMillis,
    ) -> Result<(), StoreError> {
        let (message, rcpt, owner_sql) = (sql_id(key.message), sql_u32(key.rcpt), sql_node(owner));
        let due = sql_time(due);
        let params: [&(dyn ToSql + Sync); 8] = [
            &message,
            &rcpt,
            &owner_sql,
            &routing.queue,
            &routing.schedule,
            &routing.route,
            &routing.weight,
            &due,
        ];
        // Not retried: a second run would find the lease released (NotLeased).
        let row = on_conn!(self, once, |c| c.client.query_one(&c.st.reroute, &params))?;
        match row
            .try_get::<_, i64>(0)
            .map_err(|e| corrupt("reroute", e))?
        {
            0 => Err(StoreError::NotLeased(key)),
            _ => Ok(()),
        }
    }

    async fn take_owed(
        &self,
        owner: NodeId,
        now: UnixMillis,
        own: bool,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let (owner, until, now_sql) = (sql_node(owner), self.notice_until(now), sql_time(now));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 5] = [&owner, &until, &now_sql, &own, &limit];
        // Retried. If the first run committed and only its answer was
        // lost, its notices are this node's and not returned; they are
        // taken again (by any node) when their time lapses.
        let rows = on_conn!(self, retry, |c| c.client.query(&c.st.take_owed, &params))?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn discharge(&self, notices: &[Discharge]) -> Result<Vec<MessageId>, StoreError> {
        if notices.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<EntryKey> = notices.iter().map(|d| d.key).collect();
        let (messages, rcpts) = key_arrays(&keys);
        let slots: Vec<i32> = notices.iter().map(|d| sql_slot(d.slot)).collect();
        let node = self.node_sql();
        let params: [&(dyn ToSql + Sync); 4] = [&messages, &rcpts, &slots, &node];
        // Not retried: a second run would not report the emptied messages.
        let rows = on_conn!(self, once, |c| c.client.query(&c.st.discharge, &params))?;
        message_ids(&rows, "discharge")
    }

    async fn envelope(&self, id: MessageId) -> Result<Option<Envelope>, StoreError> {
        let id = sql_id(id);
        let row = on_conn!(self, retry, |c| c.client.query_opt(&c.st.envelope, &[&id]))?;
        row.map(|r| {
            let record: &[u8] = r.try_get(0).map_err(|e| corrupt("envelope", e))?;
            decode(record, "envelope")
        })
        .transpose()
    }

    async fn entries(&self, id: MessageId) -> Result<Vec<QueueEntry>, StoreError> {
        let id = sql_id(id);
        let rows = on_conn!(self, retry, |c| c.client.query(&c.st.entries, &[&id]))?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn scan(
        &self,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        // Below every key: rcpt is never negative.
        let (message, rcpt) = match after {
            Some(k) => (sql_id(k.message), sql_u32(k.rcpt)),
            None => (i64::MIN, -1),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 3] = [&message, &rcpt, &limit];
        let rows = on_conn!(self, retry, |c| c.client.query(&c.st.scan, &params))?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn admin(&self, keys: &[EntryKey], action: AdminAction) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let (messages, rcpts) = key_arrays(keys);
        let (code, now): (i16, i64) = match action {
            AdminAction::Hold => (0, 0),
            AdminAction::Release => (1, 0),
            AdminAction::Retry { now } => (2, sql_time(now)),
        };
        let node = self.node_sql();
        let params: [&(dyn ToSql + Sync); 5] = [&messages, &rcpts, &code, &now, &node];
        // Idempotent: setting the same flag or due time twice (the feed
        // then says twice that the message changed, which is harmless).
        let row = on_conn!(self, retry, |c| c.client.query_one(&c.st.admin, &params))?;
        let n: i64 = row.try_get(0).map_err(|e| corrupt("admin", e))?;
        Ok(n as usize)
    }

    async fn cancel(&self, keys: &[EntryKey]) -> Result<Vec<MessageId>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (messages, rcpts) = key_arrays(keys);
        let node = self.node_sql();
        let params: [&(dyn ToSql + Sync); 3] = [&messages, &rcpts, &node];
        // Not retried: a second run would not report the emptied messages.
        let rows = on_conn!(self, once, |c| c.client.query(&c.st.cancel, &params))?;
        message_ids(&rows, "cancel")
    }

    async fn newest_message(&self, tag: u16) -> Result<Option<MessageId>, StoreError> {
        // Once per start, so not prepared. The primary key's index is
        // read backwards until the first id of this tag (bits 12..22; the
        // stored value flips only bit 63, see `sql_id`).
        const NEWEST: &str = "SELECT message FROM envelope \
             WHERE ((message >> 12) & 1023) = $1::bigint ORDER BY message DESC LIMIT 1";
        let tag = i64::from(tag);
        let row = on_conn!(self, retry, |c| c.client.query_opt(NEWEST, &[&tag]))?;
        row.map(|r| {
            r.try_get::<_, i64>(0)
                .map(id_from_sql)
                .map_err(|e| corrupt("newest message", e))
        })
        .transpose()
    }

    async fn register_node(&self, name: &str, node: NodeId) -> Result<Option<u16>, StoreError> {
        let id = sql_node(node);
        let row = on_conn!(self, retry, |c| c
            .client
            .query_one(&c.st.register, &[&name, &id]))?;
        let tag: i32 = row
            .try_get(0)
            .map_err(|e| corrupt("node registration", e))?;
        match tag {
            -1 => Err(StoreError::Engine(
                "all 1024 node tags are taken by nodes seen in the last 7 days; remove rows of retired nodes from the `node` table".into(),
            )),
            -2 => Err(StoreError::Engine(format!(
                "node '{name}' cannot register: its node id (a hash of the name) is registered under another name; choose another server.node-id"
            ))),
            t => {
                // One process per node name (see `claim`); a store that
                // registers the same name again keeps the claim it holds.
                let mut held = self.claim.lock().await;
                if held.as_ref().is_none_or(|(n, _)| n != name) {
                    let stale = *self.claim_stale.lock().expect("claim lock");
                    let c = claim::claim(self.pool.clone(), name, t, stale).await?;
                    *held = Some((name.to_string(), c));
                }
                drop(held);
                self.warn_of_clock_skew(name).await;
                *self.node.write().expect("node lock") = Some(id);
                *self.upkeep.lock().expect("upkeep lock") = feed::Upkeep::default();
                Ok(Some(t as u16))
            }
        }
    }

    async fn renew_owed(&self, keys: &[EntryKey], now: UnixMillis) -> Result<usize, StoreError> {
        let Some(node) = self.node_sql() else {
            return Ok(0);
        };
        if keys.is_empty() {
            return Ok(0);
        }
        // Now and then (every few seconds), so not prepared.
        const RENEW_OWED: &str = "UPDATE entry SET notice_until = $4::bigint \
             WHERE (message, rcpt) IN (SELECT * FROM unnest($1::bigint[], $2::integer[])) \
               AND notice IS NOT NULL AND notice_holder = $3::bigint";
        let (messages, rcpts) = key_arrays(keys);
        let until = self.notice_until(now);
        let params: [&(dyn ToSql + Sync); 4] = [&messages, &rcpts, &node, &until];
        // Retried: setting the same deadline twice is the same.
        let n = on_conn!(self, retry, |c| c.client.execute(RENEW_OWED, &params))?;
        Ok(n as usize)
    }

    fn node_claim_lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        match self.claim.try_lock() {
            Ok(held) => match held.as_ref() {
                Some((_, c)) => Box::pin(c.lost()),
                None => Box::pin(std::future::pending()),
            },
            // Being registered right now: asked again after the start.
            Err(_) => Box::pin(std::future::pending()),
        }
    }

    async fn feed_start(&self) -> Result<Option<FeedCursor>, StoreError> {
        let row = on_conn!(self, retry, |c| c
            .client
            .query_one(&c.st.feed_snapshot, &[]))?;
        let low: String = row.try_get(0).map_err(|e| corrupt("snapshot", e))?;
        Ok(Some(FeedCursor {
            low,
            high: None,
            after: 0,
        }))
    }

    async fn feed_read(
        &self,
        cursor: &mut FeedCursor,
        limit: usize,
    ) -> Result<FeedBatch, StoreError> {
        feed::read(self, cursor, limit).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn take_tokens(
        &self,
        queue: &str,
        capacity: u64,
        period: std::time::Duration,
        want: u32,
    ) -> Result<u32, StoreError> {
        let cap = capacity as f64;
        let per_ms = cap / (period.as_millis() as f64).max(1.0);
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        // Not retried: a second run would take tokens twice.
        let row = on_conn!(self, once, |c| c
            .client
            .query_one(&c.st.take_tokens, &[&queue, &cap, &per_ms, &want]))?;
        let got: i32 = row.try_get(0).map_err(|e| corrupt("rate bucket", e))?;
        Ok(got.max(0) as u32)
    }

    async fn announce_expedite(&self, argument: &str) -> Result<(), StoreError> {
        let node = self.node_sql();
        on_conn!(self, once, |c| c
            .client
            .execute(&c.st.announce, &[&node, &argument]))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for PgStore {
    async fn put(&self, id: MessageId, contents: Bytes) -> Result<(), StoreError> {
        let id = sql_id(id);
        let data: &[u8] = &contents;
        // Not retried, as insert.
        on_conn!(self, once, |c| c
            .client
            .execute(&c.st.blob_put, &[&id, &data]))?;
        Ok(())
    }

    async fn get(&self, id: MessageId) -> Result<Option<Bytes>, StoreError> {
        let id = sql_id(id);
        let row = on_conn!(self, retry, |c| c.client.query_opt(&c.st.blob_get, &[&id]))?;
        row.map(|r| {
            r.try_get::<_, Vec<u8>>(0)
                .map(Bytes::from)
                .map_err(|e| corrupt("contents", e))
        })
        .transpose()
    }

    async fn delete(&self, id: MessageId) -> Result<(), StoreError> {
        let id = sql_id(id);
        on_conn!(self, retry, |c| c.client.execute(&c.st.blob_delete, &[&id]))?;
        Ok(())
    }
}
