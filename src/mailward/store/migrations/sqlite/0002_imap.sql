-- mailward SQLite schema, version 2: what IMAP and POP3 need.
-- Applied by store/sqlite.py inside one IMMEDIATE transaction together with
-- `PRAGMA user_version = 2`. Never edit an applied migration: add 0003_*.sql.

-- RFC 3501 2.3.2 \Recent: messages with a uid above this mark are recent for the
-- next read-write SELECT, which moves the mark to uidnext - 1 (SqliteStore.mark_recent).
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0 CHECK (recent_uid >= 0);

-- Sum of the sizes of the mailbox's messages (RFC 8438 STATUS SIZE), kept in step with
-- message_count by every insert and delete, so STATUS never sums rows.
ALTER TABLE mailboxes ADD COLUMN size_bytes INTEGER NOT NULL DEFAULT 0;

-- Storage quota: quota_bytes 0 = unlimited; used_bytes is the sum of the sizes of every
-- message of every mailbox of the account (a copy counts again), kept in step by every
-- statement that inserts or deletes messages, so a quota check never sums rows.
ALTER TABLE accounts ADD COLUMN quota_bytes INTEGER NOT NULL DEFAULT 0 CHECK (quota_bytes >= 0);
ALTER TABLE accounts ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE mailboxes SET size_bytes = (
    SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = mailboxes.id
);
UPDATE accounts SET used_bytes = (
    SELECT coalesce(sum(size_bytes), 0) FROM mailboxes WHERE account_id = accounts.id
);

-- \Seen and \Deleted as columns computed from `flags` (stored sorted, space-separated,
-- system flags in their canonical spelling), so they can never disagree with it; the
-- partial indexes make unseen / deleted counting and the first unseen uid cost the
-- number of such messages (or a log), not the size of the mailbox.
ALTER TABLE messages ADD COLUMN seen INTEGER
    GENERATED ALWAYS AS (instr(' ' || flags || ' ', ' \Seen ') > 0) VIRTUAL;
ALTER TABLE messages ADD COLUMN deleted INTEGER
    GENERATED ALWAYS AS (instr(' ' || flags || ' ', ' \Deleted ') > 0) VIRTUAL;
CREATE INDEX messages_unseen ON messages (mailbox_id, uid) WHERE seen = 0;
CREATE INDEX messages_deleted ON messages (mailbox_id, uid) WHERE deleted = 1;

-- RFC 7162 3.2.10 QRESYNC VANISHED: one row per expunged (or moved away) message with
-- the modseq of its removal. UIDs are never reused in a mailbox, hence the key.
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
    modseq     INTEGER NOT NULL CHECK (modseq >= 1),
    PRIMARY KEY (mailbox_id, uid)
) STRICT, WITHOUT ROWID;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);

-- IMAP LSUB / LIST (SUBSCRIBED): names, which need not exist (RFC 9051 6.3.7).
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) STRICT, WITHOUT ROWID;
