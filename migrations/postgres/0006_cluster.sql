-- Clustering (docs/clustering.md). The SQLite twin is migrations/sqlite/0006_cluster.sql:
-- the same tables, unused there (cluster mode needs PostgreSQL).
--
-- cluster_nodes: one row per node id. A node renews lease_until (database clock, ms since
-- the epoch) every few seconds; a node whose lease ran out is adopted by exactly one other
-- node (adopted_by, set under the row lock), which takes over its sessions and publishes
-- their wills. incarnation counts the node's starts. node_no numbers message ids.
CREATE TABLE cluster_nodes (
    node_id     TEXT COLLATE "C" PRIMARY KEY,
    node_no     INTEGER NOT NULL UNIQUE CHECK (node_no BETWEEN 1 AND 32767),
    incarnation BIGINT  NOT NULL,
    started_at  BIGINT  NOT NULL,
    lease_until BIGINT  NOT NULL,
    adopted_by  TEXT COLLATE "C",
    mqtt_addr   TEXT    NOT NULL DEFAULT '',
    admin_addr  TEXT    NOT NULL DEFAULT ''
);
-- session_nodes: which node owns a client id's session. epoch grows with every change of
-- owner, so a node can tell that a session moved while it was not looking.
CREATE TABLE session_nodes (
    client_id TEXT COLLATE "C" PRIMARY KEY,
    node_id   TEXT COLLATE "C" NOT NULL,
    epoch     BIGINT NOT NULL
);
CREATE INDEX session_nodes_node ON session_nodes (node_id);
