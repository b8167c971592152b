-- Abuse limits state: greylisting, submission history (pipeline/abuse).
-- Per-account rows go with the account (ON DELETE CASCADE); nothing is shared between
-- accounts. Times are Unix seconds.

-- Messages and first-time recipients an account sent, per hour (Unix time // 3600):
-- the 24-hour sending caps sum at most 25 rows; rows older than two days are dropped.
CREATE TABLE sending_counts (
    account_id     INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    hour           INTEGER NOT NULL,
    messages       INTEGER NOT NULL DEFAULT 0 CHECK (messages >= 0),
    new_recipients INTEGER NOT NULL DEFAULT 0 CHECK (new_recipients >= 0),
    PRIMARY KEY (account_id, hour)
) STRICT, WITHOUT ROWID;

-- Every recipient (canonical address) an account has sent to, and when first.
CREATE TABLE sent_recipients (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    recipient  TEXT NOT NULL,
    first_sent REAL NOT NULL,
    PRIMARY KEY (account_id, recipient)
) STRICT, WITHOUT ROWID;

-- RFC 6647 triplets: client network (/24 or /64), envelope sender, local recipient.
CREATE TABLE greylist (
    network    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    passed     INTEGER NOT NULL CHECK (passed IN (0, 1)),
    PRIMARY KEY (network, sender, recipient)
) STRICT, WITHOUT ROWID;
CREATE INDEX greylist_account ON greylist (account_id);
CREATE INDEX greylist_first_seen ON greylist (passed, first_seen);
CREATE INDEX greylist_last_seen ON greylist (passed, last_seen);
