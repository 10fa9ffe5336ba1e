"""The sync engine: compile the ledger into Stripe with the fewest calls, exactly once."""
