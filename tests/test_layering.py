"""Imports run one way: the core depends on nothing of ours outside itself and
on no I/O library; connectors never import the service."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = {"gateway.events", "gateway.effects", "gateway.record", "gateway.tracker"}
# Rules that work on call records (missed calls, KPI) and the plain data they read: pure too.
RULES = {"gateway.callbacks", "gateway.kpi", "gateway.numberplan", "gateway.users"}
OURS = ("gateway", "connectors", "crm_bridge", "recordings", "dashboards")
IO_LIBRARIES = {"asyncio", "aiohttp", "aiosqlite", "sqlite3", "socket", "time", "os", "logging"}


def _imports(module: str) -> set[str]:
    path = REPO / (module.replace(".", "/") + ".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_core_imports_only_core_and_no_io() -> None:
    for module in CORE:
        for name in _imports(module):
            top = name.split(".")[0]
            assert top not in IO_LIBRARIES, f"{module} imports {name}: the core does no I/O and keeps no clock"
            if top in OURS:
                assert name in CORE, f"{module} imports {name}: the core depends on nothing of ours outside it"


def test_rules_on_call_records_are_pure() -> None:
    for module in RULES:
        for name in _imports(module):
            top = name.split(".")[0]
            assert top not in IO_LIBRARIES, f"{module} imports {name}: rules do no I/O and keep no clock"
            if top in OURS:
                assert name in CORE | RULES, f"{module} imports {name}: rules depend only on the core and rules"


def test_connectors_do_not_import_the_service() -> None:
    for path in (REPO / "connectors").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name in _imports(module):
            banned = ("gateway.service", "gateway.cli", "crm_bridge")
            assert not any(name == b or name.startswith(b + ".") for b in banned), f"{module} imports {name}"
