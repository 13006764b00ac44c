-- Clustering (docs/clustering.md). The PostgreSQL twin is migrations/postgres/0006_cluster.sql.
-- Cluster mode needs PostgreSQL; the tables exist here only so both backends share one
-- schema version.
CREATE TABLE cluster_nodes (
    node_id     TEXT PRIMARY KEY,
    node_no     INTEGER NOT NULL UNIQUE CHECK (node_no BETWEEN 1 AND 32767),
    incarnation INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    adopted_by  TEXT,
    mqtt_addr   TEXT    NOT NULL DEFAULT '',
    admin_addr  TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE session_nodes (
    client_id TEXT PRIMARY KEY,
    node_id   TEXT NOT NULL,
    epoch     INTEGER NOT NULL
);
CREATE INDEX session_nodes_node ON session_nodes (node_id);
