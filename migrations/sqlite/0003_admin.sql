-- The admin API's data: device labels, admin roles, audit targets and sources, API keys,
-- refresh tokens and settings. The PostgreSQL twin is migrations/postgres/0003_admin.sql.
-- Existing devices get no labels and existing admin users the role 'admin' (they could do
-- everything before roles existed).

-- Operator-defined labels: a JSON object of strings, written canonically by serde_json (keys
-- sorted, no spaces), so that a label filter can look for one `"key":"value"` text.
ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

ALTER TABLE admin_users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'
    CHECK (role IN ('admin', 'operator', 'viewer'));

-- What an entry is about ('device:dev-1') and where the request came from (IP address; NULL
-- for the CLI).
ALTER TABLE audit_log ADD COLUMN target TEXT;
ALTER TABLE audit_log ADD COLUMN source TEXT;
-- query_audit(): one actor's or one target's entries newest first, or a time range. Kept for
-- parity with PostgreSQL, which uses them; SQLite's planner cannot see through QUERY_AUDIT's
-- optional filters (`$n IS NULL OR ...`) and walks the ids down from the cursor instead.
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- Admin API keys, looked up by their public id; only a hash of the secret part is stored.
CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at   INTEGER
) STRICT, WITHOUT ROWID;

-- Refresh tokens by hash; `uses` above 1 means a used token came back (the family is revoked).
CREATE TABLE refresh_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    family     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses       INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
-- revoke_refresh_family(), and revoke_refresh_tokens_of() / remove_admin_user().
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);

-- Named values the admin API generates once and keeps (e.g. its token signing key).
CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT, WITHOUT ROWID;
