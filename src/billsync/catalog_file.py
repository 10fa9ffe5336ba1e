"""Reading a catalog TOML file (the I/O half of :mod:`billsync.core.catalog`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from billsync.core.catalog import Catalog, CatalogError, parse_catalog


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise CatalogError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"{path}: not valid TOML: {error}") from None
    return parse_catalog(data, str(path))
