"""Stripe's wire format for parameters: ``a[b][0][c]=v`` form bodies and query strings."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from billsync.emulator.errors import invalid

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def decode(raw: str) -> dict[str, Any]:
    """Nest ``a[b]=1&a[c][]=2&l[0][x]=3`` into dicts. Lists stay dicts keyed by index (or
    ``""`` for ``[]``) until the parameter's type says a list is wanted (see ``params``)."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, strict_parsing=False):
        match = _KEY.match(key)
        if match is None:
            raise invalid(f"Invalid parameter name: {key}", param=key)
        path = [match.group(1), *_PART.findall(match.group(2))]
        node = result
        for depth, name in enumerate(path):
            last = depth == len(path) - 1
            # key[] appends
            part = str(sum(1 for existing in node if existing.isdigit())) if name == "" else name
            if last:
                if part in node and isinstance(node[part], dict):
                    raise invalid(f"Invalid parameter: {key} is both a value and an object")
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise invalid(f"Invalid parameter: {key} is both a value and an object")
                node = child
    return result


def display(path: list[str]) -> str:
    """``["lines", "0", "amount"]`` → ``lines[0][amount]``, as Stripe names parameters."""
    return path[0] + "".join(f"[{part}]" for part in path[1:])
