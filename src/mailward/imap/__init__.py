"""IMAP mailbox operations above the protocol core: FETCH rendering and SEARCH evaluation."""
