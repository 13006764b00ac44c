-- Per-device limits and the owner of retained messages under a quota. The sqlite twin is
-- migrations/sqlite/0004_quotas.sql.

-- A device's own limits (publish and outbound rates, subscriptions, queue, retained
-- messages): a JSON object written by serde_json; '{}' = the listener's or global values.
ALTER TABLE devices ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';

-- The client that set a retained message, recorded only for clients under a retained-message
-- quota (limits.max_retained_per_client or a device's max_retained), so their count survives a
-- restart; NULL otherwise.
ALTER TABLE retained ADD COLUMN client_id TEXT;
