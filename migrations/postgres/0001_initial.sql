-- Tern schema, PostgreSQL dialect. The SQLite twin is migrations/sqlite/0001_initial.sql: same
-- tables, columns, keys and indexes (docs/persistence.md describes them).
--
-- Times are milliseconds since the Unix epoch (BIGINT). Key text columns use the "C" collation
-- so that ORDER BY matches SQLite and Rust (byte order) and index comparisons are memcmp.
-- No foreign keys: the broker group-commits operations of many clients in one transaction, and
-- one operation racing another (a delivery routed to a session that is being deleted) must not
-- fail the whole batch. DeleteSession deletes the session's rows explicitly; sweep() removes
-- rows of sessions that no longer exist and message bodies that nothing references.

-- Broker state -------------------------------------------------------------------------------

CREATE TABLE sessions (
    client_id       TEXT COLLATE "C" PRIMARY KEY,
    expiry_interval BIGINT   NOT NULL CHECK (expiry_interval BETWEEN 0 AND 4294967295),
    protocol        SMALLINT NOT NULL,
    disconnected_at BIGINT,
    will            BYTEA,
    will_at         BIGINT,
    last_seq        BIGINT   NOT NULL
);

CREATE TABLE subscriptions (
    client_id       TEXT COLLATE "C" NOT NULL,
    filter          TEXT COLLATE "C" NOT NULL,
    options         SMALLINT NOT NULL,
    subscription_id BIGINT,
    PRIMARY KEY (client_id, filter)
);

-- A message body, stored once, referenced by deliveries and retained entries.
CREATE TABLE messages (
    id         BIGINT PRIMARY KEY,
    topic      TEXT     NOT NULL,
    payload    BYTEA    NOT NULL,
    qos        SMALLINT NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain     BOOLEAN  NOT NULL,
    properties BYTEA    NOT NULL,
    expires_at BIGINT,
    created_at BIGINT   NOT NULL
);
-- sweep(): messages that expired.
CREATE INDEX messages_expires_at ON messages (expires_at) WHERE expires_at IS NOT NULL;

-- A QoS 1/2 message owed to a session. subscription_ids: decimal ids separated by commas.
CREATE TABLE deliveries (
    client_id        TEXT COLLATE "C" NOT NULL,
    seq              BIGINT   NOT NULL,
    message_id       BIGINT   NOT NULL,
    qos              SMALLINT NOT NULL CHECK (qos BETWEEN 0 AND 2),
    retain           BOOLEAN  NOT NULL,
    subscription_ids TEXT     NOT NULL,
    state            SMALLINT NOT NULL,
    PRIMARY KEY (client_id, seq)
);
-- sweep(): deliveries of a message.
CREATE INDEX deliveries_message_id ON deliveries (message_id);

-- Inbound QoS 2 packet ids: PUBREC sent, PUBREL awaited.
CREATE TABLE inbound_qos2 (
    client_id TEXT COLLATE "C" NOT NULL,
    packet_id INTEGER NOT NULL CHECK (packet_id BETWEEN 0 AND 65535),
    PRIMARY KEY (client_id, packet_id)
);

CREATE TABLE retained (
    topic      TEXT COLLATE "C" PRIMARY KEY,
    message_id BIGINT NOT NULL
);
-- sweep(): retained entries of a message.
CREATE INDEX retained_message_id ON retained (message_id);

-- Directory: devices, ACL rules, admin users, audit log ---------------------------------------

CREATE TABLE devices (
    client_id      TEXT COLLATE "C" PRIMARY KEY,
    username       TEXT COLLATE "C" UNIQUE,
    password_hash  TEXT,
    scram_verifier TEXT,
    cert_identity  TEXT,
    enabled        BOOLEAN NOT NULL,
    created_at     BIGINT  NOT NULL
);

CREATE TABLE acl_rules (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id    TEXT COLLATE "C",
    username     TEXT COLLATE "C",
    permission   TEXT NOT NULL CHECK (permission IN ('allow', 'deny')),
    action       TEXT NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
    topic        TEXT NOT NULL,
    max_qos      SMALLINT CHECK (max_qos BETWEEN 0 AND 2),
    allow_retain BOOLEAN
);

-- One row; version is bumped in the same transaction as every device or ACL rule change.
CREATE TABLE directory_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 1);

CREATE TABLE admin_users (
    username      TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT   NOT NULL,
    action TEXT   NOT NULL,
    detail TEXT   NOT NULL
);
