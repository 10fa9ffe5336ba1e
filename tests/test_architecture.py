"""The rules that keep the layers honest (STYLE.md: one door per outside system; who owns a
transaction is one written rule), checked on the source's syntax trees.

1. Imports point down. Every module of ``billsync`` sits in one layer of ``LAYERS``; a module
   imports only from its own layer or the ones below. Imports under ``if TYPE_CHECKING:`` are
   annotations, not dependencies, and are left out.
2. One door per outside system: only repositories (and db/) build SQL, only api/ knows HTTP,
   only the gateway imports ``stripe``, only ``billsync.jetstream`` imports ``nats``.
3. Transactions: only ``db/`` begins, commits or rolls back on the engine; repositories and the
   core never open a transaction (they receive a connection); a function that receives a
   connection never opens another one; the services that open their own are the ones listed in
   ``OWN_TRANSACTIONS``, each for the reason given; and no Stripe call is made while a
   transaction is open.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # pure: no database, no network, no process

SOURCE = Path(__file__).resolve().parent.parent / "src" / "billsync"
MODULES = sorted(SOURCE.rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


# Every module parsed once, here, while collection runs on one thread: CPython 3.11 before
# 3.11.8 can fail an ast.parse that overlaps one in another thread ("AST constructor recursion
# depth mismatch", python/cpython#106905), and servers of other tests run threads later on.
TREES: dict[Path, ast.Module] = {path: _parse(path) for path in MODULES}

# Top to bottom. A module belongs to the first prefix that matches its dotted name (without
# "billsync."); the order of prefixes inside a layer does not matter.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("__main__", "cli", "api", "demo")),
    ("composition", ("bootstrap", "observability.metrics")),
    ("workers", ("workers",)),
    ("services", ("services",)),
    (
        "adapters and sync primitives",
        ("stripe_gateway", "jetstream", "sync", "observability"),
    ),
    ("repositories", ("repositories",)),
    ("db", ("db",)),
    ("foundation", ("config", "catalog_file", "clock", "errors", "private_files", "runtime")),
    ("core", ("core", "__init__")),
]
# Separate programs that ship with billsync: nothing but entry points may import them, and
# they import nothing of billsync outside themselves.
PERIPHERALS = ("emulator", "simulator")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _prefix_matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(_prefix_matches(name, prefix) for prefix in prefixes):
            return index
    raise AssertionError(f"billsync.{name} is in no layer: add it to LAYERS")


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:``."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(id(child) for child in ast.walk(node))
    return found


def imports_of(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Imported modules, and ``module.name`` for each name imported from a module."""
    tree = TREES[path] if path in TREES else _parse(path)
    skip = _type_checking_blocks(tree) if runtime_only else set()
    package = module_name(path).rsplit(".", 1)[0] if "." in module_name(path) else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(["billsync", *filter(None, base), *filter(None, [module])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def billsync_targets(path: Path) -> set[str]:
    """The billsync modules (or packages) this module imports at run time, without the
    ``billsync.`` prefix; ``from billsync.x import y`` counts as ``x.y`` when ``y`` is a module."""
    targets = set()
    for name in imports_of(path, runtime_only=True):
        if not name.startswith("billsync."):
            continue
        short = name.removeprefix("billsync.")
        candidate = SOURCE / Path(*short.split("."))
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            targets.add(short)
    # Keep the most specific: "sync.port" rather than both "sync" and "sync.port".
    return {t for t in targets if not any(o.startswith(t + ".") for o in targets)}


IDS = [module_name(p) for p in MODULES]


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_imports_point_down_the_layers(path: Path) -> None:
    name = module_name(path)
    if name.split(".")[0] in PERIPHERALS:
        outside = {t for t in billsync_targets(path) if t.split(".")[0] != name.split(".")[0]}
        assert not outside, f"billsync.{name} is a separate program and imports {outside}"
        return
    own = layer_of(name)
    for target in billsync_targets(path):
        if target.split(".")[0] in PERIPHERALS:
            assert own == 0, f"billsync.{name} imports {target}: only entry points run it"
            continue
        assert layer_of(target) >= own, (
            f"billsync.{name} ({LAYERS[own][0]}) imports billsync.{target} "
            f"({LAYERS[layer_of(target)][0]}): dependencies point down the layers"
        )


def test_the_layers_are_in_the_order_the_readme_draws() -> None:
    """api/cli over services over repositories over the pure core; the sync scheduler drives
    services, which use the sync primitives and the Stripe port below them."""
    assert layer_of("api.usage") < layer_of("services.ingest") < layer_of("repositories.ledger")
    assert layer_of("repositories.ledger") < layer_of("db.database") < layer_of("core.money")
    assert layer_of("workers.scheduler") < layer_of("services.sync") < layer_of("sync.guard")
    assert layer_of("services.sync") < layer_of("stripe_gateway")
    assert layer_of("core.money") == len(LAYERS) - 1
    assert "repositories.ledger" in billsync_targets(SOURCE / "services" / "ingest.py")


SQL_BUILDERS = {
    f"sqlalchemy.{name}"
    for name in ("select", "insert", "update", "delete", "text", "sql", "dialects", "tuple_")
}


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_one_door_per_outside_system(path: Path) -> None:
    relative = path.relative_to(SOURCE).as_posix()
    imports = imports_of(path)
    roots = {name.split(".")[0] for name in imports}
    if relative.startswith("core/"):
        # The pure core: no database, no web, no clock, no billsync adapters.
        forbidden = {"sqlalchemy", "fastapi", "starlette", "httpx", "stripe", "nats"}
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
        assert not roots & {"fastapi", "starlette"}, f"{relative}: only api/ knows HTTP"
    # Only the gateway calls Stripe; the emulator reads the SDK's parameter types.
    if relative not in ("stripe_gateway.py", "emulator/params.py"):
        assert "stripe" not in roots, f"{relative}: stripe is reached through the gateway"
    if relative != "jetstream.py":
        assert "nats" not in roots, f"{relative}: NATS is reached through billsync.jetstream"


# --- transactions ----------------------------------------------------------------------------

# Services that open their own transactions, and why (STYLE.md, convention 3). Every other
# service receives a connection from its entry point.
OWN_TRANSACTIONS = {
    "services/sync.py": "calls Stripe: records the intent, calls with none open, settles",
    "services/reconcile.py": "calls Stripe: reads Stripe's side with no transaction open",
    "services/lifecycle.py": "calls Stripe: closes and finalizes periods call by call",
    "services/webhooks.py": "calls Stripe: fetches what an event names, then records it",
    "services/verify.py": "calls Stripe: compares the ledger with what Stripe holds",
    "services/ingest.py": "group commit: one transaction for many requests' batches",
    "services/event_retention.py": "a job: archives and drops partitions step by step",
    "services/event_partitions.py": "a job: creates partitions ahead of time",
    "services/adjustments.py": "a support action and its audit entry commit together",
    "services/support.py": "calls Stripe: each support action commits with its audit entry, "
    "then calls Stripe with none open and settles the outcome onto the entry",
    "services/console_auth.py": "console sign-in: sessions and users, each action with audit",
    "services/alerts.py": "calls the platform: records each crossing, then sends its webhook "
    "with no transaction open and settles the outcome",
    "services/invoice_support.py": "calls Stripe: a credit note or a payment retry commits its "
    "audit entry, calls Stripe with none open, then settles the outcome onto the entry",
    "services/catalog_prices.py": "a job: records the new pricing, then re-rates the open "
    "periods 500 accounts per transaction",
}
OPENERS = {"transaction", "read"}  # Database's two doors
ENGINE_DOORS = {"commit", "rollback", "begin", "begin_nested", "connect"}


def calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node, node.func.attr


def opens_transaction(call: ast.Call, attribute: str) -> bool:
    """``<something database-like>.transaction()`` / ``.read()`` with no arguments."""
    if attribute not in OPENERS or call.args or call.keywords:
        return False
    receiver = ast.unparse(call.func).rsplit(".", 1)[0]
    return "database" in receiver or receiver.endswith(("db", "_db"))


def source_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((SOURCE / folder).rglob("*.py"))]


def test_only_db_begins_commits_or_rolls_back_on_the_engine() -> None:
    for path in MODULES:
        if path.relative_to(SOURCE).parts[0] == "db":
            continue
        tree = TREES[path]
        for call, attribute in calls(tree):
            receiver = ast.unparse(call.func).rsplit(".", 1)[0]
            if attribute in ENGINE_DOORS and "engine" in receiver:
                pytest.fail(f"{path.relative_to(SOURCE)}: {ast.unparse(call)} — use Database")
            assert attribute not in {"commit", "rollback"}, (
                f"{path.relative_to(SOURCE)}: {ast.unparse(call)}; the transaction's owner "
                "commits by leaving its block"
            )


def test_repositories_and_the_core_never_open_a_transaction() -> None:
    for path in source_files("repositories", "core"):
        for call, attribute in calls(TREES[path]):
            assert not opens_transaction(call, attribute), (
                f"{path.relative_to(SOURCE)}: {ast.unparse(call)}; it receives a connection"
            )


def test_the_services_that_open_transactions_are_the_listed_ones() -> None:
    opening = set()
    for path in source_files("services"):
        if any(opens_transaction(c, a) for c, a in calls(TREES[path])):
            opening.add(path.relative_to(SOURCE).as_posix())
    assert opening - set(OWN_TRANSACTIONS) == set(), (
        "these services open transactions without a reason in OWN_TRANSACTIONS: the entry "
        "point owns the transaction and passes the connection"
    )
    assert set(OWN_TRANSACTIONS) - opening == set(), "OWN_TRANSACTIONS lists modules that no "
    "longer open one: remove them"


CONNECTION = re.compile(r"(\w+\.)?Connection( \| None)?")


def test_a_function_given_a_connection_never_opens_another() -> None:
    for path in MODULES:
        tree = TREES[path]
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            parameters = [*function.args.args, *function.args.kwonlyargs]
            given = any(
                a.arg == "connection"
                or CONNECTION.fullmatch(ast.unparse(a.annotation or ast.Pass()))
                for a in parameters
            )
            if not given:
                continue
            for call, attribute in calls(function):
                assert not opens_transaction(call, attribute), (
                    f"{path.relative_to(SOURCE)}:{function.name} receives a connection and "
                    f"opens another transaction ({ast.unparse(call)})"
                )


STRIPE_NAMES = {"gateway", "_gateway", "port", "stripe", "guard"}


def stripe_references(tree: ast.AST) -> Iterator[ast.expr]:
    """Every mention of the Stripe port: a call on it, or one of its methods passed along."""
    for node in ast.walk(tree):
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if isinstance(node, ast.Attribute | ast.Name) and name in STRIPE_NAMES:
            yield node


def transaction_blocks(tree: ast.AST) -> Iterator[ast.With | ast.AsyncWith]:
    for block in ast.walk(tree):
        if isinstance(block, ast.With | ast.AsyncWith) and any(
            isinstance(item.context_expr, ast.Call)
            and isinstance(item.context_expr.func, ast.Attribute)
            and opens_transaction(item.context_expr, item.context_expr.func.attr)
            for item in block.items
        ):
            yield block


def test_no_stripe_call_while_a_transaction_is_open() -> None:
    """A transaction must never stay open across a network call: inside a ``with
    database.transaction()`` or ``read()`` block, the Stripe port is not even mentioned."""
    blocks = 0
    for path in MODULES:
        for block in transaction_blocks(TREES[path]):
            blocks += 1
            for statement in block.body:
                for node in stripe_references(statement):
                    pytest.fail(
                        f"{path.relative_to(SOURCE)}:{node.lineno}: {ast.unparse(node)} is "
                        "used while a transaction is open"
                    )
    assert blocks > 20, "the check found no transaction blocks: it is looking in the wrong place"


BAD = ast.parse(
    "def sync(self, connection):\n"
    "    with self.database.transaction() as c:\n"
    "        self._call(self.gateway.add_lines, c)\n"
    "    connection.commit()\n"
)


def test_the_transaction_checks_catch_what_they_forbid() -> None:
    """The checks above are not vacuous: each finds its violation in a made-up module."""
    bad = BAD
    assert [ast.unparse(n) for b in transaction_blocks(bad) for n in stripe_references(b)] == [
        "self.gateway"
    ]
    assert any(opens_transaction(c, a) for c, a in calls(bad))
    assert {a for _, a in calls(bad)} >= {"commit"}
