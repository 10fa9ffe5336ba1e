"""Stripe's metadata parameter: how an update merges into what an object has, and its limits."""

from __future__ import annotations

from typing import Any

from billsync.emulator.errors import invalid


def merge_metadata(current: dict[str, str] | None, update: Any) -> dict[str, str]:
    """Stripe's metadata update: keys merge, an empty value unsets a key, "" unsets all."""
    if update == "":
        return {}
    merged = dict(current or {})
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > 50:
        raise invalid("Metadata can have at most 50 keys", param="metadata")
    for key, value in merged.items():
        if len(key) > 40:
            raise invalid(f"Metadata key {key!r} is longer than 40 characters", param="metadata")
        if len(value) > 500:
            raise invalid(
                f"Metadata value of {key!r} is longer than 500 characters", param="metadata"
            )
    return merged
