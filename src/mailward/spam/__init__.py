"""Statistical spam filtering: tokens of a message, each user's Bayes filter, and its
training from what users do with their Junk mailbox."""
