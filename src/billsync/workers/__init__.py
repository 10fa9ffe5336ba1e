"""The entry point of syncing: the scheduler and its worker threads, above the services they
drive (sync, lifecycle); the primitives they use (budget, breaker, leases, the Stripe port and
its guard) are below, in :mod:`billsync.sync`."""
