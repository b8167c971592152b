-- mailward SQLite schema, version 3: what the outbound queue worker needs.
-- Applied by store/sqlite.py inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 3`. Never edit an applied migration: add 0004_*.sql.

-- A worker claims entries (state 'delivering') under its owner id until lease_until;
-- it renews the lease while it works. An entry whose lease ran out (its worker died)
-- is claimable again, and a restarted node takes back its own dead process's claims at
-- once (SqliteStore.requeue_claims).
ALTER TABLE queue ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE queue ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
-- Unix time the last attempt started (0: never tried).
ALTER TABLE queue ADD COLUMN last_attempt REAL NOT NULL DEFAULT 0;
-- 1 once the sender has been told of the delay (RFC 3464 Action: delayed), so only once.
ALTER TABLE queue ADD COLUMN warned INTEGER NOT NULL DEFAULT 0 CHECK (warned IN (0, 1));

CREATE INDEX queue_lease ON queue (lease_until) WHERE state = 'delivering';
