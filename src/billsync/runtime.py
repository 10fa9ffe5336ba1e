"""Process-wide settings of a long-running billsync process.

The garbage collector: a server builds a large, long-lived heap at start-up (the catalog,
SQLAlchemy's tables and compiled statements, FastAPI's routes and models), then allocates and
frees tens of thousands of short-lived objects per ingest batch. Left at Python's defaults, the
cyclic collector runs every 700 net allocations and, every so often, walks that whole
start-up heap again: a fifth of ingest's CPU (bench.ingest, measured with and without). So once
started, a process moves what it has built so far out of the collector's sight
(``gc.freeze``) and collects its young objects less often. Reference counting frees almost
everything on the hot paths anyway; the collector is only for cycles, which still get collected.
"""

from __future__ import annotations

import gc

# Young-generation collections every 20,000 net allocations instead of 700; the older
# generations at Python's default ratios. (bench.ingest: 700 → 20,000 is ~5 % on SQLite.)
GC_THRESHOLDS = (20_000, 10, 10)


def settle_heap() -> None:
    """Call once a process has built everything it keeps for its lifetime."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
