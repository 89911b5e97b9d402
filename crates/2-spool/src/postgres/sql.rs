//! Every statement the store runs, prepared once per connection.
//!
//! Each store operation is one statement, so it runs in its own implicit
//! transaction: atomic, and durable when it returns (as the server's
//! `synchronous_commit` makes it). Statements that change several entries
//! lock them in key order first, the order every writer uses, so two of
//! them can wait for each other but never deadlock; the claims use
//! `SKIP LOCKED` and never wait at all.
//!
//! Parameters carry explicit casts so that preparing needs no type hints.
//! Entry columns are always selected as [`ENTRY_COLS`] and read back by
//! `super::entry_from_row`.

use tokio_postgres::{Client, Statement};

use crate::store::StoreError;

/// The columns of an entry row, in the order `super::entry_from_row` reads.
pub const ENTRY_COLS: &str = "e.message, e.rcpt, e.queue, e.schedule, e.route, e.lane, e.held, \
     e.due, e.attempts, e.weight, e.lease_owner, e.lease_until, e.last_error, e.notify_count, \
     e.notice";

/// How many columns [`ENTRY_COLS`] names.
pub const ENTRY_COL_COUNT: usize = 15;

/// Envelope ($1 id, $2 record) and entries ($3..$18, one array per column);
/// $19 is the writing node (for the change feed), $20 the contents if any.
///
/// Plain inserts: a message id that exists already is refused (a unique
/// violation, so the statement fails whole), never overwritten. Ids are
/// unique per node, but two nodes sharing the database could mint the same
/// one (see `MessageId`: 10 bits of node tag); overwriting would silently
/// replace another node's message, refusing costs the client a 4xx.
const INSERT_ENTRIES: &str = "
INSERT INTO entry (message, rcpt, queue, schedule, route, lane, held, due,
                   attempts, weight, lease_owner, lease_until, last_error, notify_count,
                   notice, notice_slot)
SELECT * FROM unnest($3::bigint[], $4::integer[], $5::text[], $6::text[], $7::text[],
                     $8::smallint[], $9::boolean[], $10::bigint[], $11::integer[],
                     $12::integer[], $13::bigint[], $14::bigint[], $15::text[], $16::integer[],
                     $17::bytea[], $18::integer[])";

const INSERT_ENVELOPE: &str = "
env AS (
    INSERT INTO envelope (message, record) VALUES ($1::bigint, $2::bytea)
)";

/// The contents ($20) in the same statement, hence the same commit.
const INSERT_CONTENTS: &str = "
contents AS (
    INSERT INTO blob (message, contents) VALUES ($1::bigint, $20::bytea)
)";

/// The change-feed row of an insert: $19 is the writing node.
const INSERT_CHANGE: &str = "
change_row AS (
    INSERT INTO change (node, message) VALUES ($19::bigint, $1::bigint)
)";

/// Due-order claim: $1 owner, $2 lane, $3 now, $4 queue or NULL, $5 limit,
/// $6 lease deadline. Returns the entries and the eligible-at they were
/// claimed by, for ordering.
const CLAIM: &str = "
WITH picked AS (
    -- Lease rule: claimable is eligible_at <= now (not held, due, and no live
    -- lease; see the entry table). SKIP LOCKED: rows another claim holds at
    -- this moment are left to it, so nodes claiming at once never wait for
    -- each other nor take the same entry.
    SELECT message, rcpt, eligible_at FROM entry
     WHERE lane = $2::smallint AND eligible_at <= $3::bigint
       AND ($4::text IS NULL OR queue = $4::text)
     ORDER BY eligible_at, message, rcpt
     LIMIT $5::bigint
     FOR UPDATE SKIP LOCKED
)
UPDATE entry e SET lease_owner = $1::bigint, lease_until = $6::bigint
  FROM picked
 WHERE e.message = picked.message AND e.rcpt = picked.rcpt
RETURNING ENTRY_COLS, picked.eligible_at";

/// Claim by key: $1 owner, $2/$3 keys, $4 now, $5 lease deadline.
const CLAIM_KEYS: &str = "
WITH picked AS (
    -- Lease rule: any lane, any due time; never a held entry, one finished
    -- with its notice owed (notice_slot 0), nor one under
    -- another node's live lease (lease_until > now). A lease $1 already holds,
    -- live or from before a restart, is taken over and extended. SKIP LOCKED:
    -- a row another transaction is changing right now is busy and simply not
    -- claimed (the scheduler re-reads it); two nodes claiming one key at once
    -- never wait for each other, and exactly one of them gets it.
    SELECT e.message, e.rcpt FROM entry e
     WHERE (e.message, e.rcpt) IN (SELECT * FROM unnest($2::bigint[], $3::integer[]))
       AND NOT e.held AND e.notice_slot IS DISTINCT FROM 0
       AND (e.lease_owner IS NULL OR e.lease_owner = $1::bigint OR e.lease_until <= $4::bigint)
     FOR UPDATE SKIP LOCKED
)
UPDATE entry e SET lease_owner = $1::bigint, lease_until = $5::bigint
  FROM picked
 WHERE e.message = picked.message AND e.rcpt = picked.rcpt
RETURNING ENTRY_COLS";

/// A job's start in one round trip: [`CLAIM_KEYS`] ($1 owner, $2/$3 keys,
/// $4 now, $5 lease deadline), then message $6's envelope and, if $7, its
/// contents. One row per claimed entry ([`ENTRY_COLS`], then its position,
/// then envelope record and contents, both only on the first row and NULL
/// when missing); no rows when nothing was claimed, and then neither is
/// read (the scalar subqueries are init plans, run only when needed).
///
/// One statement sees one snapshot, and the claimed entry rows are visible
/// in it: so is the envelope, inserted in the same transaction as they were
/// (and the contents when this database holds them), and no complete can
/// have removed the envelope while an entry of its message remains.
const CLAIM_JOB: &str = "
WITH picked AS (
    -- The lease rule of CLAIM_KEYS, word for word.
    SELECT e.message, e.rcpt FROM entry e
     WHERE (e.message, e.rcpt) IN (SELECT * FROM unnest($2::bigint[], $3::integer[]))
       AND NOT e.held AND e.notice_slot IS DISTINCT FROM 0
       AND (e.lease_owner IS NULL OR e.lease_owner = $1::bigint OR e.lease_until <= $4::bigint)
     FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE entry e SET lease_owner = $1::bigint, lease_until = $5::bigint
      FROM picked
     WHERE e.message = picked.message AND e.rcpt = picked.rcpt
    RETURNING ENTRY_COLS
)
SELECT c.*,
       CASE WHEN c.n = 1 THEN (SELECT record FROM envelope WHERE message = $6::bigint) END,
       CASE WHEN c.n = 1 AND $7::boolean
            THEN (SELECT contents FROM blob WHERE message = $6::bigint) END
  FROM (SELECT claimed.*, row_number() OVER () AS n FROM claimed) c";

/// $1 owner, $2/$3 keys, $4 new deadline. Counts what it renewed.
const RENEW: &str = "
WITH mine AS (
    -- Lease rule: only the owner renews, whether or not its lease has lapsed,
    -- as long as no other node has taken the entry over.
    SELECT e.message, e.rcpt FROM entry e
      JOIN unnest($2::bigint[], $3::integer[]) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
     WHERE e.lease_owner = $1::bigint
     ORDER BY e.message, e.rcpt
     FOR UPDATE OF e
)
UPDATE entry e SET lease_until = $4::bigint
  FROM mine
 WHERE e.message = mine.message AND e.rcpt = mine.rcpt";

/// $1 message, $2 rcpt, $3 owner; -1 when not leased by $3 (see migration 1).
const COMPLETE: &str = "SELECT ferrymail_complete($1::bigint, $2::integer, $3::bigint)";

/// $1 message, $2 rcpt, $3 owner, $4 notice record, $5 notice slot (0,
/// final), $6 until when the notice is $3's to send (migration 4). One row with the entries the message has (this one included)
/// when $3 held the lease, none otherwise. The change feed learns that the
/// entry is finished (other nodes drop it from their index).
const COMPLETE_OWING: &str = "
WITH done AS (
    -- Lease rule: only the owner records the outcome, and doing so releases
    -- the lease. The entry stays, finished, until its notice is discharged;
    -- the count's snapshot is from before the update, which did not change
    -- how many entries there are.
    UPDATE entry SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1,
           notice = $4::bytea, notice_slot = $5::integer,
           notice_holder = $3::bigint, notice_until = $6::bigint
     WHERE message = $1::bigint AND rcpt = $2::integer AND lease_owner = $3::bigint
    RETURNING message
), change_row AS (
    INSERT INTO change (node, message) SELECT $3::bigint, message FROM done
)
SELECT (SELECT count(*) FROM entry WHERE message = $1::bigint) FROM done";

/// $1 message, $2 rcpt, $3 owner, $4 next due, $5 last error, $6 notify
/// count, $7/$8 the delay notice owed and its slot (NULL: keep what is
/// there, with its holder), $9 until when a new notice is $3's to send
/// (migration 4), $10 what the attempt count goes up by (0 when nothing
/// was attempted). Returns how many entries it deferred (0 or 1).
const DEFER: &str = "
WITH deferred AS (
    -- Lease rule: only the owner records the outcome, and doing so releases the lease.
    UPDATE entry SET lane = 1, due = $4::bigint, attempts = attempts + $10::integer,
           lease_owner = NULL, lease_until = NULL,
           last_error = $5::text, notify_count = $6::integer,
           notice = coalesce($7::bytea, notice),
           notice_slot = coalesce($8::integer, notice_slot),
           notice_holder = CASE WHEN $7::bytea IS NULL THEN notice_holder ELSE $3::bigint END,
           notice_until = CASE WHEN $7::bytea IS NULL THEN notice_until ELSE $9::bigint END
     WHERE message = $1::bigint AND rcpt = $2::integer AND lease_owner = $3::bigint
    RETURNING message
), change_row AS (
    INSERT INTO change (node, message) SELECT $3::bigint, message FROM deferred
)
SELECT count(*) FROM deferred";

/// $1 message, $2 rcpt, $3 owner, $4..$7 the new queue, schedule, route
/// and weight, $8 due. Returns how many entries moved (0 or 1).
const REROUTE: &str = "
WITH moved AS (
    -- Lease rule: only the owner moves the entry, and doing so releases the lease.
    UPDATE entry SET queue = $4::text, schedule = $5::text, route = $6::text,
           weight = $7::integer, due = $8::bigint,
           lease_owner = NULL, lease_until = NULL
     WHERE message = $1::bigint AND rcpt = $2::integer AND lease_owner = $3::bigint
    RETURNING message
), change_row AS (
    INSERT INTO change (node, message) SELECT $3::bigint, message FROM moved
)
SELECT count(*) FROM moved";

/// $1 the taking node, $2 until when what it takes is its to send, $3
/// now, $4 whether to take the notices $1 holds whatever their time (at
/// its start: they were its own before a crash), $5 at most this many.
/// Takes owed notices whose holder's time has lapsed (NULL: recorded
/// before holders were); `SKIP LOCKED` and the re-checked condition make
/// two nodes sweeping at once take each notice once.
const TAKE_OWED: &str = "
WITH lapsed AS (
    SELECT e.message, e.rcpt FROM entry e
     WHERE e.notice IS NOT NULL
       AND (coalesce(e.notice_until, 0) <= $3::bigint
            OR ($4::boolean AND e.notice_holder = $1::bigint))
     ORDER BY e.message, e.rcpt
     LIMIT $5::bigint
     FOR UPDATE OF e SKIP LOCKED
)
UPDATE entry e SET notice_holder = $1::bigint, notice_until = $2::bigint
  FROM lapsed
 WHERE e.message = lapsed.message AND e.rcpt = lapsed.rcpt
RETURNING ENTRY_COLS";

const ENVELOPE: &str = "SELECT record FROM envelope WHERE message = $1::bigint";

const ENTRIES: &str = "SELECT ENTRY_COLS FROM entry e WHERE e.message = $1::bigint ORDER BY e.rcpt";

/// Entries after key ($1, $2), at most $3.
const SCAN: &str = "
SELECT ENTRY_COLS FROM entry e
 WHERE (e.message, e.rcpt) > ($1::bigint, $2::integer)
 ORDER BY e.message, e.rcpt
 LIMIT $3::bigint";

/// $1/$2 keys, $3 action (0 hold, 1 release, 2 retry), $4 "now" of a
/// retry, $5 the node acting (NULL if unknown). Returns how many entries it
/// changed.
const ADMIN: &str = "
WITH target AS (
    -- Operator actions ignore leases: an attempt in flight finishes and its
    -- outcome is still recorded.
    SELECT e.message, e.rcpt FROM entry e
      JOIN unnest($1::bigint[], $2::integer[]) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
     ORDER BY e.message, e.rcpt
     FOR UPDATE OF e
), changed AS (
    UPDATE entry e SET
        held = CASE $3::smallint WHEN 0 THEN true WHEN 1 THEN false ELSE e.held END,
        due = CASE WHEN $3::smallint = 2 THEN $4::bigint ELSE e.due END
      FROM target
     WHERE e.message = target.message AND e.rcpt = target.rcpt
    RETURNING e.message
), change_row AS (
    INSERT INTO change (node, message) SELECT DISTINCT $5::bigint, message FROM changed
)
SELECT count(*) FROM changed";

/// $1/$2 keys, $3 the node acting (NULL if unknown); the emptied messages
/// in the order they emptied.
const CANCEL: &str = "
SELECT m FROM ferrymail_cancel($1::bigint[], $2::integer[], $3::bigint) WITH ORDINALITY AS t (m, n)
 ORDER BY n";

/// $1/$2 keys, $3 slots, $4 the node discharging (for the change feed);
/// the emptied messages in the order they emptied.
const DISCHARGE: &str = "
SELECT m FROM ferrymail_discharge($1::bigint[], $2::integer[], $3::integer[], $4::bigint)
    WITH ORDINALITY AS t (m, n)
 ORDER BY n";

/// The feed's high-water mark: the snapshot a read reads up to.
const FEED_SNAPSHOT: &str = "SELECT pg_current_snapshot()::text";

/// One page of change rows: committed after snapshot $1 (not visible in
/// it) and by snapshot $2 (visible in it), after row $3, not written by
/// node $4, at most $5. See `super::feed` for why snapshots and not `seq`.
const FEED_PAGE: &str = "
SELECT seq, message, expedite FROM change
 WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
   AND xid <  pg_snapshot_xmax($2::text::pg_snapshot)
   AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
   AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
   AND seq > $3::bigint
   AND node IS DISTINCT FROM $4::bigint
 ORDER BY seq
 LIMIT $5::bigint";

/// The entries of messages $1, as they are now.
const FEED_ENTRIES: &str = "
SELECT ENTRY_COLS FROM entry e WHERE e.message = ANY ($1::bigint[]) ORDER BY e.message, e.rcpt";

/// The envelopes of messages $1 (for their recipients' domains).
const FEED_ENVELOPES: &str =
    "SELECT message, record FROM envelope WHERE message = ANY ($1::bigint[])";

/// $1 the node, $2 the ETRN/flush argument.
const ANNOUNCE: &str = "INSERT INTO change (node, expedite) VALUES ($1::bigint, $2::text)";

/// $1 name, $2 node id; see migration 3.
const REGISTER: &str = "SELECT ferrymail_register($1::text, $2::bigint)";

/// $1 queue, $2 capacity, $3 tokens per millisecond, $4 wanted; see
/// migration 3.
const TAKE_TOKENS: &str =
    "SELECT ferrymail_take_tokens($1::text, $2::float8, $3::float8, $4::integer)";

/// A plain insert, refused if the id exists, for the reason given at
/// [`INSERT_ENTRIES`].
const BLOB_PUT: &str = "INSERT INTO blob (message, contents) VALUES ($1::bigint, $2::bytea)";

const BLOB_GET: &str = "SELECT contents FROM blob WHERE message = $1::bigint";

const BLOB_DELETE: &str = "DELETE FROM blob WHERE message = $1::bigint";

/// The prepared statements of one connection, one per store operation.
pub struct Statements {
    /// [`crate::DataStore::insert`].
    pub insert: Statement,
    /// [`crate::DataStore::insert_with_contents`].
    pub insert_with_contents: Statement,
    /// [`crate::DataStore::claim`].
    pub claim: Statement,
    /// [`crate::DataStore::claim_keys`].
    pub claim_keys: Statement,
    /// [`crate::DataStore::claim_job`].
    pub claim_job: Statement,
    /// [`crate::DataStore::renew`].
    pub renew: Statement,
    /// [`crate::DataStore::complete`].
    pub complete: Statement,
    /// [`crate::DataStore::complete`] with a notice owed.
    pub complete_owing: Statement,
    /// [`crate::DataStore::defer`].
    pub defer: Statement,
    /// [`crate::DataStore::take_owed`].
    pub take_owed: Statement,
    /// [`crate::DataStore::reroute`].
    pub reroute: Statement,
    /// [`crate::DataStore::envelope`].
    pub envelope: Statement,
    /// [`crate::DataStore::entries`].
    pub entries: Statement,
    /// [`crate::DataStore::scan`].
    pub scan: Statement,
    /// [`crate::DataStore::admin`].
    pub admin: Statement,
    /// [`crate::DataStore::cancel`].
    pub cancel: Statement,
    /// [`crate::DataStore::discharge`].
    pub discharge: Statement,
    /// [`crate::BlobStore::put`].
    pub blob_put: Statement,
    /// [`crate::BlobStore::get`].
    pub blob_get: Statement,
    /// [`crate::BlobStore::delete`].
    pub blob_delete: Statement,
    /// [`crate::DataStore::feed_read`]: the snapshot to read up to.
    pub feed_snapshot: Statement,
    /// [`crate::DataStore::feed_read`]: one page of change rows.
    pub feed_page: Statement,
    /// [`crate::DataStore::feed_read`]: the changed messages' entries.
    pub feed_entries: Statement,
    /// [`crate::DataStore::feed_read`]: their envelopes.
    pub feed_envelopes: Statement,
    /// [`crate::DataStore::announce_expedite`].
    pub announce: Statement,
    /// [`crate::DataStore::register_node`].
    pub register: Statement,
    /// [`crate::DataStore::take_tokens`].
    pub take_tokens: Statement,
}

impl Statements {
    /// Prepares every statement on `client`, all in one pipelined exchange.
    pub async fn prepare(client: &Client) -> Result<Statements, StoreError> {
        let cols = |s: &str| s.replace("ENTRY_COLS", ENTRY_COLS);
        let insert = format!("WITH {INSERT_ENVELOPE}, {INSERT_CHANGE} {INSERT_ENTRIES}");
        let insert_with_contents =
            format!("WITH {INSERT_ENVELOPE}, {INSERT_CHANGE}, {INSERT_CONTENTS} {INSERT_ENTRIES}");
        let claim_job = cols(CLAIM_JOB);
        let take_owed = cols(TAKE_OWED);
        let (claim, claim_keys, entries, scan, feed_entries) = (
            cols(CLAIM),
            cols(CLAIM_KEYS),
            cols(ENTRIES),
            cols(SCAN),
            cols(FEED_ENTRIES),
        );
        let p = |sql| client.prepare(sql);
        let r = tokio::try_join!(
            p(&insert),
            p(&insert_with_contents),
            p(&claim),
            p(&claim_keys),
            p(RENEW),
            p(COMPLETE),
            p(COMPLETE_OWING),
            p(DEFER),
            p(ENVELOPE),
            p(&entries),
            p(&scan),
            p(ADMIN),
            p(CANCEL),
            p(DISCHARGE),
            p(BLOB_PUT),
            p(BLOB_GET),
            p(BLOB_DELETE),
        )
        .map_err(super::pg_error)?;
        let f = tokio::try_join!(
            p(FEED_SNAPSHOT),
            p(FEED_PAGE),
            p(&feed_entries),
            p(FEED_ENVELOPES),
            p(ANNOUNCE),
            p(REGISTER),
            p(TAKE_TOKENS),
            p(&claim_job),
            p(&take_owed),
            p(REROUTE),
        )
        .map_err(super::pg_error)?;
        Ok(Statements {
            insert: r.0,
            insert_with_contents: r.1,
            claim: r.2,
            claim_keys: r.3,
            renew: r.4,
            complete: r.5,
            complete_owing: r.6,
            defer: r.7,
            envelope: r.8,
            entries: r.9,
            scan: r.10,
            admin: r.11,
            cancel: r.12,
            discharge: r.13,
            blob_put: r.14,
            blob_get: r.15,
            blob_delete: r.16,
            feed_snapshot: f.0,
            feed_page: f.1,
            feed_entries: f.2,
            feed_envelopes: f.3,
            announce: f.4,
            register: f.5,
            take_tokens: f.6,
            claim_job: f.7,
            take_owed: f.8,
            reroute: f.9,
        })
    }
}
