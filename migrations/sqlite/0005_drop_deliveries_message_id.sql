-- Nothing to do on SQLite: the twin of migrations/postgres/0005_drop_deliveries_message_id.sql,
-- which drops the index on deliveries (message_id) there. SQLite keeps it: its sweep looks up
-- deliveries by message with correlated subqueries (sql.rs), one index search per message body
-- with the index, a scan of the table without it.
SELECT 1;
