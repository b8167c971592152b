-- mailward SQLite schema, version 1.
-- Applied by store/sqlite.py inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 1`. Never edit an applied migration: add 0002_*.sql.
-- Addresses are stored canonical (api.canonical_address). Blob files live outside the
-- database (store/blobs.py); a blob row exists only once its file is durable.

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Last UIDVALIDITY handed out; never goes backwards, even when mailboxes are deleted.
INSERT INTO counters (name, value) VALUES ('uidvalidity', 0);

CREATE TABLE domains (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
) STRICT;

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL UNIQUE,
    domain_id     INTEGER NOT NULL REFERENCES domains (id),
    password_hash TEXT NOT NULL,
    created       REAL NOT NULL
) STRICT;
CREATE INDEX accounts_domain ON accounts (domain_id);

CREATE TABLE aliases (
    id         INTEGER PRIMARY KEY,
    address    TEXT NOT NULL UNIQUE,
    domain_id  INTEGER NOT NULL REFERENCES domains (id),
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created    REAL NOT NULL
) STRICT;
CREATE INDEX aliases_account ON aliases (account_id);
CREATE INDEX aliases_domain ON aliases (domain_id);

-- One address space for accounts and aliases (backstop for the checks in sqlite.py).
CREATE TRIGGER accounts_address_free BEFORE INSERT ON accounts
WHEN EXISTS (SELECT 1 FROM aliases WHERE address = NEW.address)
BEGIN
    SELECT RAISE(ABORT, 'address is an alias');
END;

CREATE TRIGGER aliases_address_free BEFORE INSERT ON aliases
WHEN EXISTS (SELECT 1 FROM accounts WHERE address = NEW.address)
BEGIN
    SELECT RAISE(ABORT, 'address is an account');
END;

CREATE TABLE mailboxes (
    id            INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    special_use   TEXT NOT NULL DEFAULT '',
    uidvalidity   INTEGER NOT NULL CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext       INTEGER NOT NULL DEFAULT 1 CHECK (uidnext BETWEEN 1 AND 4294967296),
    highestmodseq INTEGER NOT NULL DEFAULT 1 CHECK (highestmodseq >= 1),
    message_count INTEGER NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    UNIQUE (account_id, name)
) STRICT;

CREATE TABLE blobs (
    id      TEXT PRIMARY KEY,
    size    INTEGER NOT NULL CHECK (size >= 0),
    created REAL NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    mailbox_id    INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid           INTEGER NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
    blob_id       TEXT NOT NULL REFERENCES blobs (id),
    size          INTEGER NOT NULL CHECK (size >= 0),
    internal_date REAL NOT NULL,
    flags         TEXT NOT NULL DEFAULT '',  -- space-separated, sorted
    modseq        INTEGER NOT NULL CHECK (modseq >= 1),
    UNIQUE (mailbox_id, uid)
) STRICT;
CREATE INDEX messages_blob ON messages (blob_id);
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);

CREATE TABLE queue (
    id           INTEGER PRIMARY KEY,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    blob_id      TEXT NOT NULL REFERENCES blobs (id),
    state        TEXT NOT NULL
        CHECK (state IN ('queued', 'deferred', 'delivering', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created      REAL NOT NULL,
    next_attempt REAL NOT NULL,
    last_error   TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX queue_due ON queue (state, next_attempt);
CREATE INDEX queue_blob ON queue (blob_id);
