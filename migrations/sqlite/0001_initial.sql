-- Tern schema, SQLite dialect. The PostgreSQL twin is migrations/postgres/0001_initial.sql: same
-- tables, columns, keys and indexes (docs/persistence.md describes them).
--
-- STRICT tables (SQLite >= 3.37, bundled by sqlx): INTEGER holds BIGINT, SMALLINT and BOOLEAN
-- (0/1), BLOB holds BYTEA. Text compares bytewise (BINARY), like the "C" collation on PostgreSQL.
-- No foreign keys: the broker group-commits operations of many clients in one transaction, and
-- one operation racing another (a delivery routed to a session that is being deleted) must not
-- fail the whole batch. DeleteSession deletes the session's rows explicitly; sweep() removes
-- rows of sessions that no longer exist and message bodies that nothing references.

-- Broker state -------------------------------------------------------------------------------

CREATE TABLE sessions (
    client_id       TEXT    NOT NULL PRIMARY KEY,
    expiry_interval INTEGER NOT NULL CHECK (expiry_interval BETWEEN 0 AND 4294967295),
    protocol        INTEGER NOT NULL,
    disconnected_at INTEGER,
    will            BLOB,
    will_at         INTEGER,
    last_seq        INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE subscriptions (
    client_id       TEXT    NOT NULL,
    filter          TEXT    NOT NULL,
    options         INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (client_id, filter)
) STRICT, WITHOUT ROWID;

-- A message body, stored once, referenced by deliveries and retained entries.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain     INTEGER NOT NULL,
    properties BLOB    NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
) STRICT;
-- sweep(): messages that expired.
CREATE INDEX messages_expires_at ON messages (expires_at) WHERE expires_at IS NOT NULL;

-- A QoS 1/2 message owed to a session. subscription_ids: decimal ids separated by commas.
CREATE TABLE deliveries (
    client_id        TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    message_id       INTEGER NOT NULL,
    qos              INTEGER NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain           INTEGER NOT NULL,
    subscription_ids TEXT    NOT NULL,
    state            INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)
) STRICT, WITHOUT ROWID;
-- sweep(): deliveries of a message.
CREATE INDEX deliveries_message_id ON deliveries (message_id);

-- Inbound QoS 2 packet ids: PUBREC sent, PUBREL awaited.
CREATE TABLE inbound_qos2 (
    client_id TEXT    NOT NULL,
    packet_id INTEGER NOT NULL CHECK (packet_id BETWEEN 0 AND 65535),
    PRIMARY KEY (client_id, packet_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE retained (
    topic      TEXT    NOT NULL PRIMARY KEY,
    message_id INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
-- sweep(): retained entries of a message.
CREATE INDEX retained_message_id ON retained (message_id);

-- Directory: devices, ACL rules, admin users, audit log ---------------------------------------

CREATE TABLE devices (
    client_id      TEXT    NOT NULL PRIMARY KEY,
    username       TEXT    UNIQUE,
    password_hash  TEXT,
    scram_verifier TEXT,
    cert_identity  TEXT,
    enabled        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT: ids are never reused, even after the newest rule is deleted.
CREATE TABLE acl_rules (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id    TEXT,
    username     TEXT,
    permission   TEXT    NOT NULL CHECK (permission IN ('allow', 'deny')),
    action       TEXT    NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
    topic        TEXT    NOT NULL,
    max_qos      INTEGER CHECK (max_qos BETWEEN 0 AND 2),
    allow_retain INTEGER
) STRICT;

-- One row; version is bumped in the same transaction as every device or ACL rule change.
CREATE TABLE directory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO directory_version (id, version) VALUES (1, 1);

CREATE TABLE admin_users (
    username      TEXT    NOT NULL PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL
) STRICT;
