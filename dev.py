#!/usr/bin/env python3
"""Set-up and entry point for a fresh machine with only Python 3.11+.

    python3 dev.py demo   # create .venv, install billsync, run the demo
    python3 dev.py test   # create .venv, install billsync + tools, run lint, types and tests
                          # (in parallel: BILLSYNC_TEST_WORKERS processes, default 4)
    python3 dev.py test -m unit   # lint, types and the unit layer only (seconds)
    python3 dev.py audit  # pip-audit of every installed package (needs network: PyPI's or
                          # OSV's vulnerability database); --strict: one not audited fails it

The virtual environment is rebuilt whenever pyproject.toml or requirements.lock change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".billsync-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.lock"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before the venv exists
        sys.exit(f"billsync needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = _fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and PYTHON.exists():
        return
    print("setting up .venv (first run, or dependencies changed) ...", flush=True)
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    install = [*pip, "install", "-c", "requirements.lock", "-e", ".[dev]"]
    subprocess.run(install, cwd=ROOT, check=True)
    STAMP.write_text(wanted + "\n")


def run(*command: str) -> int:
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT, check=False).returncode


def test(extra: list[str]) -> int:
    steps = [
        ("ruff check", ("ruff", "check", ".")),
        ("ruff format --check", ("ruff", "format", "--check", ".")),
        ("mypy", ("mypy",)),
    ]
    for title, command in steps:
        print(f"== {title}", flush=True)
        if run(*command) != 0:
            print(f"== {title} failed", flush=True)
            return 1
    print("== pytest", flush=True)
    return run("pytest", *_parallel(extra), *extra)


def _parallel(extra: list[str]) -> list[str]:
    """pytest-xdist options, unless the command line chose its own or runs the unit layer
    (which takes seconds: starting workers would cost more than it saves). Most of the suite
    waits on servers, processes and databases rather than computing, so it runs more workers
    than the machine has cores; the long chaos runs are collected first and start at once."""
    chosen = ("-n", "--numprocesses", "--dist", "no:xdist", "-pno:xdist")
    if any(arg in chosen or arg.startswith(("-n", "--numprocesses=")) for arg in extra):
        return []
    if "-m" in extra and extra[extra.index("-m") + 1 :][:1] == ["unit"]:
        return []
    workers = os.environ.get("BILLSYNC_TEST_WORKERS", "4")
    return ["-n", workers, "--dist", "worksteal"] if workers not in ("0", "1") else []


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "setup", "audit"):
        print(__doc__)
        return 2
    ensure_environment()
    if sys.argv[1] == "setup":
        return 0
    if sys.argv[1] == "test":
        return test(sys.argv[2:])
    if sys.argv[1] == "audit":
        pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-e", ".[audit]"], cwd=ROOT, check=True)
        return run("pip-audit", "--local", "--strict", "--skip-editable", *sys.argv[2:])
    return run("billsync", "demo", *sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
