"""A Stripe emulator: the slice of the Stripe API billsync uses, with the semantics that matter.

For tests, benchmarks and the demo — never production. State lives in memory.
"""
