"""Priority lanes of Stripe calls (lower is more urgent): a person waiting beats cycle close,
which beats threshold syncs, which beat interval syncs."""

ON_DEMAND = 0
CLOSING = 1
THRESHOLD = 2
INTERVAL = 3
