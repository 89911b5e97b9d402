-- Migration 1: the queue tables, the claim index, and the two functions that
-- remove entries (complete, cancel).
--
-- Ids and times are bigint. Message ids are stored with their top bit flipped
-- (see `postgres::sql_id`), so that signed order equals the unsigned order of
-- `MessageId` and key-order scans stay correct past 2039, when ids start using
-- their top bit. Times are Unix milliseconds.

-- Message contents: written once, read by delivery and notifications,
-- deleted when no recipient refers to them any more.
CREATE TABLE blob (
    message  bigint PRIMARY KEY,
    contents bytea  NOT NULL
);

-- Envelopes: written once at accept time, as the codec-encoded record
-- (`codec::encode`, a version byte plus postcard). Nothing queries inside
-- them, so they need no columns of their own.
CREATE TABLE envelope (
    message bigint PRIMARY KEY,
    record  bytea  NOT NULL
);

-- Per-recipient queue entries, one column per field: these are the rows the
-- scheduler claims, renews, defers and completes, and the fields of its WHERE
-- and ORDER BY clauses must be plain columns.
CREATE TABLE entry (
    message      bigint   NOT NULL,
    rcpt         integer  NOT NULL CHECK (rcpt >= 0),
    queue        text     NOT NULL,
    schedule     text     NOT NULL,
    route        text     NOT NULL,
    lane         smallint NOT NULL,             -- 0 pending, 1 deferred
    held         boolean  NOT NULL,
    due          bigint   NOT NULL,
    attempts     integer  NOT NULL,
    weight       integer  NOT NULL,
    lease_owner  bigint,                        -- NULL: no lease
    lease_until  bigint,                        -- NULL exactly when lease_owner is
    last_error   text,
    notify_count integer  NOT NULL,
    -- Lease rule for due-order claims, the embedded store's `ready` index as
    -- a column: a held entry is never eligible; otherwise it is eligible from
    -- its due time, or from its lease deadline while a lease is live. So
    -- `eligible_at <= now` is exactly `QueueEntry::is_claimable(now)`.
    eligible_at  bigint GENERATED ALWAYS AS (
        CASE WHEN held THEN NULL ELSE greatest(due, coalesce(lease_until, 0)) END
    ) STORED,
    PRIMARY KEY (message, rcpt),
    CHECK ((lease_owner IS NULL) = (lease_until IS NULL))
);

-- The claim index: one range scan per lane up to "now", earliest first, that
-- never meets a held entry.
CREATE INDEX entry_ready ON entry (lane, eligible_at, message, rcpt)
    WHERE eligible_at IS NOT NULL;

-- Completes one entry for its lease owner and reports how many entries of the
-- message are left (-1: not leased by p_owner, or gone). Removes the envelope
-- with the last entry. One round trip on the delivery hot path.
CREATE FUNCTION ferrymail_complete(p_message bigint, p_rcpt integer, p_owner bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    left_over bigint;
BEGIN
    -- Removals of one message's entries take turns on its envelope row.
    -- Each statement below then runs with a fresh snapshot (READ COMMITTED),
    -- so whichever removal comes last counts the others' deletes and removes
    -- the envelope. Without the lock, two nodes completing a message's last
    -- two entries at once would each still count the other's entry, and the
    -- envelope (and its contents) would stay behind for ever.
    PERFORM 1 FROM envelope WHERE message = p_message FOR UPDATE;
    -- Lease rule: only the owner completes. Its lease may have lapsed; as long
    -- as no other node took the entry over, the outcome is still its own.
    DELETE FROM entry
     WHERE message = p_message AND rcpt = p_rcpt AND lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    SELECT count(*) INTO left_over FROM entry WHERE message = p_message;
    IF left_over = 0 THEN
        DELETE FROM envelope WHERE message = p_message;
    END IF;
    RETURN left_over;
END
$$;

-- Removes entries whatever their lease (operator cancel), in the order given,
-- and returns, in that order, the messages left without entries (their
-- envelopes are removed too; the caller deletes their contents).
CREATE FUNCTION ferrymail_cancel(p_messages bigint[], p_rcpts integer[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    -- Lock envelopes, then entries, each in key order: the order
    -- ferrymail_complete and the multi-entry updates use, so that concurrent
    -- writers cannot deadlock.
    PERFORM 1 FROM envelope WHERE message = ANY (p_messages)
      ORDER BY message FOR UPDATE;
    PERFORM 1 FROM entry e
      JOIN unnest(p_messages, p_rcpts) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
      ORDER BY e.message, e.rcpt FOR UPDATE OF e;
    FOR i IN 1 .. coalesce(array_length(p_messages, 1), 0) LOOP
        DELETE FROM entry WHERE message = p_messages[i] AND rcpt = p_rcpts[i];
        IF FOUND AND NOT EXISTS (SELECT 1 FROM entry WHERE message = p_messages[i]) THEN
            DELETE FROM envelope WHERE message = p_messages[i];
            RETURN NEXT p_messages[i];
        END IF;
    END LOOP;
END
$$;
