"""Files that hold secrets or the ledger: created readable by their owner only (0600), in a
directory created 0700 — never, not even for a moment, readable by other users of the host."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def private_directory(path: Path) -> None:
    """Create the directory (and its parents) 0700 if it is missing; an existing one is left
    as the operator set it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def create_private(path: Path) -> bool:
    """Create an empty file 0600 if there is none; True if this call created it."""
    private_directory(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


def write_private(path: Path, text: str) -> None:
    """Write a new secret file, 0600 from its first byte (fails if the file exists)."""
    private_directory(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
