-- Migration 2: notices owed (RFC 3461 §6, RFC 3464). A delivery status
-- notification that is owed about a recipient is recorded on its entry in
-- the same statement as the outcome it reports, and cleared by
-- ferrymail_discharge once the notification itself is queued, so a crash in
-- between cannot lose it (see `DataStore::discharge`).

-- The owed notice as the codec-encoded record (`OwedNotice`, a version byte
-- plus postcard), and which notice it is: 0 the final outcome's (the entry
-- is finished and is kept only for the notice), n >= 1 the delay notice of
-- notify age n (the entry is still being delivered). Both NULL: none owed.
ALTER TABLE entry ADD COLUMN notice bytea;
ALTER TABLE entry ADD COLUMN notice_slot integer CHECK (notice_slot >= 0);
ALTER TABLE entry ADD CHECK ((notice IS NULL) = (notice_slot IS NULL));

-- An entry with a final notice owed is never eligible for a claim, like a
-- held one. A generated column cannot be altered: it is dropped (with the
-- claim index) and added again, which rewrites the table once.
ALTER TABLE entry DROP COLUMN eligible_at;
ALTER TABLE entry ADD COLUMN eligible_at bigint GENERATED ALWAYS AS (
    CASE WHEN held OR coalesce(notice_slot = 0, false) THEN NULL
         ELSE greatest(due, coalesce(lease_until, 0)) END
) STORED;
CREATE INDEX entry_ready ON entry (lane, eligible_at, message, rcpt)
    WHERE eligible_at IS NOT NULL;

-- Settles notices that are now queued: for each (message, rcpt, slot), in
-- the order given, an entry whose notice_slot is `slot` loses its notice;
-- with slot 0 (final) the entry is removed, and the envelope with the
-- message's last entry. Returns, in that order, the messages left without
-- entries (the caller deletes their contents). A slot that does not match
-- (gone, or a newer notice recorded since) changes nothing.
CREATE FUNCTION ferrymail_discharge(p_messages bigint[], p_rcpts integer[], p_slots integer[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    -- Envelopes, then entries, each in key order: the order every other
    -- multi-row writer uses, so that concurrent writers cannot deadlock.
    PERFORM 1 FROM envelope WHERE message = ANY (p_messages)
      ORDER BY message FOR UPDATE;
    PERFORM 1 FROM entry e
      JOIN unnest(p_messages, p_rcpts) AS k (message, rcpt)
        ON e.message = k.message AND e.rcpt = k.rcpt
      ORDER BY e.message, e.rcpt FOR UPDATE OF e;
    FOR i IN 1 .. coalesce(array_length(p_messages, 1), 0) LOOP
        IF p_slots[i] = 0 THEN
            DELETE FROM entry
             WHERE message = p_messages[i] AND rcpt = p_rcpts[i] AND notice_slot = 0;
            IF FOUND AND NOT EXISTS (SELECT 1 FROM entry WHERE message = p_messages[i]) THEN
                DELETE FROM envelope WHERE message = p_messages[i];
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
