"""Which billsync installation wrote a Stripe object, and in which Stripe mode.

Two installations can share one Stripe account (a laptop and a staging server on one test
account). Stripe's idempotency keys are per Stripe account, so two installations that built the
same key (``billsync:customer:acme``) would be answered each other's objects. Every installation
therefore has a *namespace*, part of every key it sends and of the metadata of every object it
creates; an object whose metadata names another namespace is never adopted, updated or
removed. The empty namespace is an installation from before namespaces: its keys and metadata
are the ones it has always used, and it treats objects without a namespace as its own.

A ledger synced in one Stripe mode names objects that do not exist in the other (test and live
mode are separate worlds in one account: https://docs.stripe.com/keys#test-live-modes); it is
tied to the mode of its first write.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Literal

NAMESPACE_KEY = "billsync_namespace"
"""The metadata key that names an object's installation."""

_NAMESPACE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")

Mode = Literal["test", "live"]

_MODES: dict[str, Mode] = {
    "sk_live_": "live", "rk_live_": "live", "sk_test_": "test", "rk_test_": "test",
}  # fmt: skip


class NamespaceError(ValueError):
    pass


def new_namespace() -> str:
    """A fresh installation's namespace: 8 random hex digits."""
    return secrets.token_hex(4)


def check_namespace(value: str) -> str:
    """``value`` if it can name an installation (lowercase letters, digits and inner hyphens,
    at most 32 characters: it goes into every idempotency key, which Stripe caps at 255)."""
    if not _NAMESPACE.fullmatch(value):
        raise NamespaceError(
            f"{value!r} cannot be a Stripe namespace: use 1 to 32 lowercase letters, digits and "
            "hyphens (not first or last), e.g. 'staging' or 'laptop-ana'"
        )
    return value


def key_mode(api_key: str) -> Mode | None:
    """The Stripe mode a secret or restricted key acts in; None if it is not such a key."""
    for prefix, mode in _MODES.items():
        if api_key.startswith(prefix):
            return mode
    return None


def is_ours(metadata: Mapping[str, str], namespace: str) -> bool:
    """Whether an object with this metadata belongs to the installation of ``namespace``."""
    return metadata.get(NAMESPACE_KEY, "") == namespace


def mode_conflict(synced_in: str | None, key: Mode | None) -> str | None:
    """What is wrong when a ledger synced in one mode is given a key of the other, or None."""
    if synced_in is None or key is None or synced_in == key:
        return None
    return (
        f"this ledger was synced to Stripe in {synced_in} mode and the configured key is a "
        f"{key} key: the customers and invoices it names do not exist in {key} mode. Configure "
        f"a {synced_in} key, or give {key} mode a database of its own"
    )
