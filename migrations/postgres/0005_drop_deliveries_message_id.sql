-- Drop the index on deliveries (message_id). The sqlite twin is
-- migrations/sqlite/0005_drop_deliveries_message_id.sql, which keeps it.
--
-- Every durable delivery is inserted once and deleted once (its acknowledgement), so each index
-- on deliveries costs a B-tree insert, WAL and later vacuum work per delivery: this one was 15%
-- of PostgreSQL's CPU time for a batch of 1,400 publications to persistent sessions. Only the
-- sweep and the start-up load look deliveries up by message, and PostgreSQL runs those as hash
-- joins over the whole table (as the orphan sweep did already).
DROP INDEX IF EXISTS deliveries_message_id;
