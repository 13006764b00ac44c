-- The user name of the principal that created a persistent session (NULL: anonymous). Only the
-- same principal may resume the session. Rows written before this column existed get NULL.
-- The PostgreSQL twin is migrations/postgres/0002_session_owner.sql.

ALTER TABLE sessions ADD COLUMN owner TEXT;
