"""The ``[crm]`` section: how long to retry, and the sinks, one array of tables
per kind (``[[crm.webhook]]``, ``[[crm.bitrix24]]``, ``[[crm.amocrm]]``,
``[[crm.onec]]``). Each sink module parses its own table (``parse``); a sink's
name is its name in the outbox, the metrics and the admin's list, unique
across kinds. Raises ValueError naming the file, table and key.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from crm_bridge.bridge import RetryPolicy
from crm_bridge.sinks import Sink, SinkContext
from gateway.toml_table import Table

# The kinds of sink: each is the module crm_bridge.sinks.<kind>, with
# parse(table, name, environ, base) -> its config and build(config, context) -> Sink.
# A module is imported only when the config has a sink of its kind.
KINDS = ("webhook", "bitrix24", "amocrm", "onec")


def _module(kind: str) -> ModuleType:
    return importlib.import_module(f"crm_bridge.sinks.{kind}")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass(frozen=True)
class SinkEntry:
    kind: str
    name: str
    config: Any  # the kind's config dataclass


@dataclass(frozen=True)
class CrmConfig:
    policy: RetryPolicy = RetryPolicy()
    public_base_url: str | None = None  # the gateway as CRM users reach it (links to recordings)
    sinks: tuple[SinkEntry, ...] = ()

    def of_kind(self, kind: str) -> list[Any]:
        return [sink.config for sink in self.sinks if sink.kind == kind]


def parse_crm(data: Any, where: str, environ: Mapping[str, str], base: Path) -> CrmConfig:
    top = Table(data, where, "[crm]")

    def positive(key: str, default: float, expected: str) -> float:
        value = top.get(key, (int, float), default, expected)
        if value <= 0:
            raise top.fail(key, expected, value)
        return float(value)

    policy = RetryPolicy(
        first_seconds=positive("retry_first_seconds", 10, "seconds > 0 before the first retry"),
        max_seconds=positive("retry_max_minutes", 60, "minutes > 0 between two retries at most") * 60,
        give_up_seconds=positive("give_up_hours", 24, "hours > 0 of retrying before an entry is dead") * 3600,
        timeout_seconds=positive("timeout_seconds", 15, "seconds > 0 one attempt may take"),
    )
    public = top.get("public_base_url", str, None, 'the gateway\'s URL for CRM users, like "https://cti.example.ru"')
    if public is not None and (not public.startswith(("https://", "http://")) or public.count("/") != 2):
        raise top.fail("public_base_url", 'a URL like "https://cti.example.ru" (scheme and host, no path)', public)
    sinks: list[SinkEntry] = []
    seen: set[str] = set()
    for kind in KINDS:
        items = top.get(kind, list, [], f"an array of tables [[crm.{kind}]]")
        for n, item in enumerate(items, 1):
            t = Table(item, where, f"[[crm.{kind}]] #{n}")
            name = t.get("name", str, None, "a name of letters, digits, '-' or '_' (up to 40)")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise t.fail("name", "a name of letters, digits, '-' or '_' (up to 40)", name)
            if name in seen:
                raise t.fail("name", "a name no other CRM sink has", name)
            seen.add(name)
            config = _module(kind).parse(t, name, environ, base)
            t.check_unknown()
            sinks.append(SinkEntry(kind, name, config))
    top.check_unknown()
    return CrmConfig(policy=policy, public_base_url=public.rstrip("/") if public else None, sinks=tuple(sinks))


def build_sinks(crm: CrmConfig, ctx: SinkContext) -> list[Sink]:
    sinks: list[Sink] = [_module(sink.kind).build(sink.config, ctx) for sink in crm.sinks]
    return sinks
