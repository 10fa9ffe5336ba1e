"""Priority lanes of Stripe calls (lower is more urgent): a person waiting beats cycle close,
which beats threshold syncs, which beat interval syncs."""

from billsync.sync.budget import Lane

ON_DEMAND = Lane.ON_DEMAND
CLOSING = Lane.CLOSING
THRESHOLD = Lane.THRESHOLD
INTERVAL = Lane.INTERVAL
