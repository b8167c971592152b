-- Bayes spam filter state per account (spam/bayes.py).
-- Every row belongs to one account and goes with it (ON DELETE CASCADE): one user's
-- training never reaches another's filter (DESIGN.md 3, walled off). Tokens are
-- 64-bit hashes (spam/tokens.py), never words. Counts never go negative (CHECK, and
-- SqliteStore.bayes_train clamps); a token row whose counts are both 0 is deleted.

-- How many messages the account has trained as spam and as ham.
CREATE TABLE bayes_totals (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    spam       INTEGER NOT NULL DEFAULT 0 CHECK (spam >= 0),
    ham        INTEGER NOT NULL DEFAULT 0 CHECK (ham >= 0)
) STRICT;

-- In how many trained spam / ham messages each token occurs.
CREATE TABLE bayes_tokens (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token      INTEGER NOT NULL,
    spam       INTEGER NOT NULL DEFAULT 0 CHECK (spam >= 0),
    ham        INTEGER NOT NULL DEFAULT 0 CHECK (ham >= 0),
    PRIMARY KEY (account_id, token)
) STRICT, WITHOUT ROWID;

-- Which messages were trained, as what, with the tokens they added (little-endian
-- signed 64-bit integers, at most api.MAX_BAYES_TOKENS): retraining as the other
-- class or forgetting subtracts exactly what was added, even once the message itself
-- is gone. A rowid table: rows of up to 32 KiB do not belong in a WITHOUT ROWID b-tree.
CREATE TABLE bayes_trained (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    message_key TEXT NOT NULL,
    spam        INTEGER NOT NULL CHECK (spam IN (0, 1)),
    tokens      BLOB NOT NULL,
    trained     REAL NOT NULL,
    UNIQUE (account_id, message_key)
) STRICT;
