-- mailward SQLite schema, version 4: the quarantine (NIST SP 800-45 content filtering).
-- A held message keeps its blob and the targets it would have had; `release` turns it
-- into the messages / queue entries it was going to be, `delete` drops it.

CREATE TABLE quarantine (
    id         INTEGER PRIMARY KEY,
    blob_id    TEXT NOT NULL REFERENCES blobs (id),
    sender     TEXT NOT NULL,
    targets    TEXT NOT NULL,  -- JSON: {"local": [[account_id, mailbox, [flags]]], "outbound": [...]}
    check_name TEXT NOT NULL,
    reason     TEXT NOT NULL,
    size       INTEGER NOT NULL CHECK (size >= 0),
    created    REAL NOT NULL
) STRICT;
CREATE INDEX quarantine_blob ON quarantine (blob_id);
