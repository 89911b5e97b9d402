-- Migration 3: what lets nodes sharing this database work as one cluster:
-- the change feed (`change`), the node registry (`node`) that hands every
-- node a message-id tag of its own, and cluster-wide rate buckets.

-- The change feed. Every statement that changes queue entries adds one row
-- per message it touched (in the same transaction, hence the same commit),
-- and `queue flush` / ETRN on one node add a row naming their target. Each
-- node reads the rows other nodes wrote (see `postgres::feed` for how rows
-- that commit late are never skipped) and re-reads those messages' entries.
--
-- `xid` is the writing transaction's id: a row is read by the first feed
-- read whose snapshot sees that transaction committed. `seq` only orders a
-- read's rows and pages through them. Rows are pruned once every node has
-- had ample time to read them (`postgres::feed::RETENTION`).
CREATE TABLE change (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid      xid8   NOT NULL DEFAULT pg_current_xact_id(),
    node     bigint,        -- the writing node (NodeId), so it skips its own rows
    message  bigint,        -- entries of this message changed
    expedite text,          -- or: an ETRN/flush argument, '' for everything
    CHECK ((message IS NULL) <> (expedite IS NULL))
);
CREATE INDEX change_xid ON change (xid);

-- The node registry: one row per node name, with the 10-bit tag its message
-- ids carry (see `MessageId`). A hash of the name would collide between
-- nodes now and then (1 in 1024 for two nodes); a registered tag never does.
-- `node_id` is the lease owner; it is unique too, so two names whose hashes
-- collide are refused instead of sharing leases.
CREATE TABLE node (
    tag        smallint    PRIMARY KEY CHECK (tag BETWEEN 0 AND 1023),
    name       text        NOT NULL UNIQUE,
    node_id    bigint      NOT NULL UNIQUE,
    registered timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Returns the tag of node p_name, registering it with the lowest free tag
-- the first time. When all 1024 are taken, the tag of the node unseen for
-- longest is reused, provided it has not been seen for 7 days (its ids
-- carry old timestamps, so a new node reusing its tag cannot mint them).
-- -1: no tag free. -2: p_node is registered under another name (or p_name
-- under another node id).
CREATE FUNCTION ferrymail_register(p_name text, p_node bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t integer;
    n bigint;
BEGIN
    -- Registrations take turns, so two new nodes never pick the same tag.
    PERFORM pg_advisory_xact_lock(7310582953063015013);
    SELECT tag, node_id INTO t, n FROM node WHERE name = p_name;
    IF FOUND THEN
        IF n <> p_node THEN
            RETURN -2;
        END IF;
        UPDATE node SET last_seen = now() WHERE name = p_name;
        RETURN t;
    END IF;
    IF EXISTS (SELECT 1 FROM node WHERE node_id = p_node) THEN
        RETURN -2;
    END IF;
    SELECT min(g) INTO t FROM generate_series(0, 1023) AS g
     WHERE g NOT IN (SELECT tag FROM node);
    IF t IS NULL THEN
        SELECT tag INTO t FROM node WHERE last_seen < now() - interval '7 days'
         ORDER BY last_seen LIMIT 1;
        IF t IS NULL THEN
            RETURN -1;
        END IF;
        DELETE FROM node WHERE tag = t;
    END IF;
    INSERT INTO node (tag, name, node_id) VALUES (t, p_name, p_node);
    RETURN t;
END
$$;

-- Cluster-wide rates: one token bucket per virtual queue with a rate
-- (`[queue.virtual.<q>] rate`), refilled by the database's clock so that
-- nodes' clocks do not matter. Nodes take tokens in small batches
-- (ferrymail_take_tokens) and spend them locally.
CREATE TABLE rate_bucket (
    queue       text             PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at bigint           NOT NULL   -- Unix ms, the database's clock
);

-- Takes up to p_want tokens from p_queue's bucket (p_capacity at most,
-- p_per_ms added per millisecond; created full) and returns how many.
CREATE FUNCTION ferrymail_take_tokens(p_queue text, p_capacity double precision,
                                      p_per_ms double precision, p_want integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    now_ms  bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    t       double precision;
    granted integer;
BEGIN
    INSERT INTO rate_bucket (queue, tokens, refilled_at)
    VALUES (p_queue, p_capacity, now_ms)
    ON CONFLICT (queue) DO NOTHING;
    -- Takers of one queue take turns on its row.
    SELECT least(p_capacity, tokens + greatest(0, now_ms - refilled_at) * p_per_ms)
      INTO t FROM rate_bucket WHERE queue = p_queue FOR UPDATE;
    granted := greatest(0, least(p_want, floor(t + 1e-9)))::integer;
    UPDATE rate_bucket SET tokens = t - granted,
                           refilled_at = greatest(refilled_at, now_ms)
     WHERE queue = p_queue;
    RETURN granted;
END
$$;

-- Completing an entry now also logs the change (p_owner is the writing
-- node), and removes the contents with the last entry, in the same
-- transaction: a node killed between its complete and a separate delete of
-- the contents left them behind for ever (no envelope refers to them).
-- When the contents are kept elsewhere this `blob` table is empty and the
-- delete finds nothing; the caller still deletes from its blob store.
CREATE OR REPLACE FUNCTION ferrymail_complete(p_message bigint, p_rcpt integer, p_owner bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    left_over bigint;
BEGIN
    -- See migration 1 for why the envelope row is locked first.
    PERFORM 1 FROM envelope WHERE message = p_message FOR UPDATE;
    DELETE FROM entry
     WHERE message = p_message AND rcpt = p_rcpt AND lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    INSERT INTO change (node, message) VALUES (p_owner, p_message);
    SELECT count(*) INTO left_over FROM entry WHERE message = p_message;
    IF left_over = 0 THEN
        DELETE FROM envelope WHERE message = p_message;
        DELETE FROM blob WHERE message = p_message;
    END IF;
    RETURN left_over;
END
$$;

-- Cancel now logs the change too, naming the node that cancelled (p_node,
-- NULL when unknown), and removes the contents of emptied messages as
-- complete does.
DROP FUNCTION ferrymail_cancel(bigint[], integer[]);
CREATE FUNCTION ferrymail_cancel(p_messages bigint[], p_rcpts integer[], p_node bigint)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    -- Lock order as in migration 1.
    PERFORM 1 FROM envelope WHERE message = ANY (p_messages)
      ORDER BY message FOR UPDATE;
    PERFORM 1 FROM entry e
      JOIN unnest(p_messages, p_rcpts) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
      ORDER BY e.message, e.rcpt FOR UPDATE OF e;
    INSERT INTO change (node, message)
    SELECT DISTINCT p_node, m FROM unnest(p_messages) AS m;
    FOR i IN 1 .. coalesce(array_length(p_messages, 1), 0) LOOP
        DELETE FROM entry WHERE message = p_messages[i] AND rcpt = p_rcpts[i];
        IF FOUND AND NOT EXISTS (SELECT 1 FROM entry WHERE message = p_messages[i]) THEN
            DELETE FROM envelope WHERE message = p_messages[i];
            DELETE FROM blob WHERE message = p_messages[i];
            RETURN NEXT p_messages[i];
        END IF;
    END LOOP;
END
$$;

-- Discharging notices (migration 2) changes entries too: it logs the change
-- (p_node, the node discharging) so that other nodes drop the finished
-- entries, and removes the contents of emptied messages as complete does.
DROP FUNCTION ferrymail_discharge(bigint[], integer[], integer[]);
CREATE FUNCTION ferrymail_discharge(p_messages bigint[], p_rcpts integer[], p_slots integer[],
                                    p_node bigint)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    -- Lock order as in migration 1.
    PERFORM 1 FROM envelope WHERE message = ANY (p_messages)
      ORDER BY message FOR UPDATE;
    PERFORM 1 FROM entry e
      JOIN unnest(p_messages, p_rcpts) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
      ORDER BY e.message, e.rcpt FOR UPDATE OF e;
    INSERT INTO change (node, message)
    SELECT DISTINCT p_node, m FROM unnest(p_messages) AS m;
    FOR i IN 1 .. coalesce(array_length(p_messages, 1), 0) LOOP
        IF p_slots[i] = 0 THEN
            DELETE FROM entry
             WHERE message = p_messages[i] AND rcpt = p_rcpts[i] AND notice_slot = 0;
            IF FOUND AND NOT EXISTS (SELECT 1 FROM entry WHERE message = p_messages[i]) THEN
                DELETE FROM envelope WHERE message = p_messages[i];
                DELETE FROM blob WHERE message = p_messages[i];
                RETURN NEXT p_messages[i];
            END IF;
        ELSE
            UPDATE entry SET notice = NULL, notice_slot = NULL
             WHERE message = p_messages[i] AND rcpt = p_rcpts[i]
               AND notice_slot = p_slots[i];
        END IF;
    END LOOP;
END
$$;
