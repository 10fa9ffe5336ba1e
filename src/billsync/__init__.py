"""billsync: a durable usage ledger that syncs compiled invoices to Stripe."""

__version__ = "0.1.0"
