"""Import rules that keep the layers honest (STYLE.md: one door per outside system)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "billsync"


def imports_of(path: Path) -> set[str]:
    """Imported modules, and ``module.name`` for each name imported from a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SQL_BUILDERS = {
    f"sqlalchemy.{name}"
    for name in ("select", "insert", "update", "delete", "text", "sql", "dialects", "tuple_")
}


MODULES = sorted(SOURCE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SOURCE)))
def test_layers(path: Path) -> None:
    relative = path.relative_to(SOURCE).as_posix()
    imports = imports_of(path)
    if relative.startswith("core/"):
        # The pure core: no database, no web, no clock, no billsync adapters.
        forbidden = {"sqlalchemy", "fastapi", "starlette", "httpx", "stripe", "billsync.db"}
        offending = {name for name in imports if name.split(".")[0] in forbidden}
        offending |= {
            n for n in imports if n.startswith("billsync.") and not n.startswith("billsync.core")
        }
        assert not offending, f"{relative} is pure core and must not import {sorted(offending)}"
    if not relative.startswith(("repositories/", "db/")):
        offending = {name for name in imports if any(name.startswith(b) for b in SQL_BUILDERS)}
        assert not offending, f"{relative}: only repositories write SQL"
    # The emulator is a separate HTTP peer (Stripe's stand-in), so it serves HTTP itself.
    if not relative.startswith(("api/", "emulator/")):
        assert not {n for n in imports if n.split(".")[0] in {"fastapi", "starlette"}}, (
            f"{relative}: only the api package knows HTTP"
        )
    # Only the gateway calls Stripe; the emulator reads the SDK's parameter types.
    if relative not in ("stripe_gateway.py", "emulator/params.py"):
        assert "stripe" not in {n.split(".")[0] for n in imports}, (
            f"{relative}: stripe is reached through the gateway"
        )
    if relative != "jetstream.py":
        assert "nats" not in {n.split(".")[0] for n in imports}, (
            f"{relative}: NATS is reached through billsync.jetstream"
        )


def test_services_do_not_commit() -> None:
    """The entry point owns the transaction: services and repositories never commit."""
    for folder in ("services", "repositories", "core"):
        for path in (SOURCE / folder).rglob("*.py"):
            text = path.read_text()
            assert ".commit(" not in text, f"{path.name} commits; the entry point owns that"
