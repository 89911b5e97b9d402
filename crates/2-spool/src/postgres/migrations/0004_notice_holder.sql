-- Migration 4: who is sending an owed notice, and until when that is theirs.
--
-- The node that records a notice owed (migration 2) sends it from memory
-- after batching it (report.dsn.batch-max-hold), then discharges it. Before
-- this migration a node handed every owed notice in the database to its
-- DSN layer when it started: it could send again a notice another, live
-- node was still batching, and a notice whose node died and never came back
-- waited for some node's next start.
--
-- Now the recording node is the notice's holder until notice_until (its
-- lease plus its batching window). At its start a node takes back the
-- notices it holds; while running it takes over those whose holder's time
-- has lapsed (`DataStore::take_owed`). NULL notice_until (rows from before
-- this migration) counts as lapsed.
ALTER TABLE entry ADD COLUMN notice_holder bigint;
ALTER TABLE entry ADD COLUMN notice_until bigint;

-- The take-over sweep reads only entries with a notice owed: few, and all
-- in this index.
CREATE INDEX entry_notice ON entry (notice_until) WHERE notice IS NOT NULL;
