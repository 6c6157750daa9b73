"""Payment: credit accounts on a double-entry ledger, with two-phase charges (hold -> capture or
release) so that a user is charged only for a job that delivered."""
