"""/metrics of a whole gateway (tests/harness.py), and the Grafana dashboard
that reads it.

Calls come in from both sides the gateway has: an Asterisk capture over AMI
and signed Zadarma samples over HTTP (with a duplicate, a bad signature, an
unknown account and an unused event). The exposition is read as Prometheus
reads it, over HTTP; no number or name of the calls may appear in it. The
dashboard in dashboards/grafana.json may name only metrics a running gateway
exposes, and must show every cti_* family; dashboards/README.md documents each.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.ami.server import capture_stream
from crm_bridge.bridge_config import CrmConfig, SinkEntry
from crm_bridge.sinks.webhook import WebhookSinkConfig
from gateway.metrics import WEBHOOK_RESULTS
from gateway.numberplan import PlanBook
from recordings.collector import Collector
from tests.conftest import CAPTURES
from tests.harness import Harness
from tests.test_hub import running, tab
from tests.test_numberplan import example_plan
from tests.test_zadarma import ANSWERED, MISSED, ZADARMA, deliver, post, sample_clock

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "grafana.json"
DOCS = REPO / "dashboards" / "README.md"

# The calls' people: a_answered's caller (+79161110001 "Ivan Pet") and DID,
# the Zadarma samples' callers and DID, as any provider may spell them.
NUMBERS = ("79161110001", "74950000001", "79990001122", "79990005566", "74950000100")
NAMES = ("Ivan", "Иван")
# A phone number in any spelling: +7..., 7999.../8999..., any run of 10+ digits.
PHONE = re.compile(r"\+\d|\b[78]9\d{2}|\d{10,}")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA) as harness:
        yield harness


async def scrape(h: Harness) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{h.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


def samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, labels as the exposition writes them (sorted here)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def outside_values(text: str) -> Iterator[str]:
    """Every part of the exposition but the sample values (a ``_created``
    timestamp is a run of 10+ digits by nature): names, labels, HELP, TYPE."""
    for line in text.splitlines():
        if line.startswith("#") or not line:
            yield line
        else:
            yield line.rsplit(" ", 1)[0]


def assert_names_nobody(text: str) -> None:
    for number in NUMBERS:
        assert number not in text, number
    for name in NAMES:
        assert name not in text, name
    for part in outside_values(text):
        assert not PHONE.search(part), part


async def test_metrics_count_calls_webhooks_and_recordings_and_name_nobody(h: Harness, tmp_path: Path) -> None:
    async with tab(h, "anna"):
        await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))  # +79161110001 -> +74950000001, 101
        await h.wait_records(1)
        await deliver(h, ANSWERED)  # +79990001122 -> +74950000100 (not in the plan: shop A, "unknown")
        await deliver(h, MISSED)  # the caller gave up while 101 and 102 rang
        await deliver(h, ANSWERED[:1])  # the provider sends an event again
        async with aiohttp.ClientSession() as http:
            assert (await post(http, h, ANSWERED[1], signature="bm90IGl0"))[0] == 401
            assert (await post(http, h, ANSWERED[1], account="other"))[0] == 404
            assert (await post(http, h, ANSWERED[1], data=b"event=NOTIFY_NEW_THING&pbx_call_id=x"))[0] == 200
            async with http.get(f"{h.url}/webhooks/zadarma/main?zd_echo=x1") as response:  # Zadarma's URL check
                assert response.status == 200
            async with http.get(f"{h.url}/webhooks/nosuch/main") as response:  # no such provider: no label for it
                assert response.status == 404
        await h.webhooks.idle()
        await h.gateway.drain()
    assert len(h.records) == 3
    # The collector gives up on the Zadarma recording (no connector fetches it
    # here) and keeps trying for the capture's (Asterisk has not written it).
    collector = Collector(h.recordings, directory=tmp_path / "collected", asterisk_dir=h.asterisk_dir,
                          asterisk_prefix="/var/spool/asterisk/recordings/", clock=h.clock,
                          on_missing=h.metrics.recording_missing)
    assert await collector.collect_due() == 2
    await h.metrics.count_backlogs(h.store)  # what the watch task does every COUNT_EVERY seconds

    text = await scrape(h)
    values = samples(text)
    calls = {key: value for key, value in values.items() if key.startswith("cti_calls_finished_total")}
    assert calls == {
        'cti_calls_finished_total{channel="direct",outcome="answered",shop="A"}': 1,
        'cti_calls_finished_total{channel="unknown",outcome="answered",shop="A"}': 1,
        'cti_calls_finished_total{channel="unknown",outcome="abandoned",shop="A"}': 1,
    }
    requests = {key: value for key, value in values.items() if key.startswith("cti_webhook_requests_total")}
    expected = {"accepted": 9, "duplicate": 1, "refused_signature": 1, "refused_other": 1, "ignored": 2,
                "unavailable": 0}
    assert set(expected) == set(WEBHOOK_RESULTS)
    assert requests == {f'cti_webhook_requests_total{{provider="zadarma",result="{result}"}}': count
                        for result, count in expected.items()}
    assert values["cti_webhook_queue_depth"] == 0
    assert values["cti_webhook_inbox_pending"] == 0  # every request's call is stored
    assert values["cti_recordings_pending"] == 1
    assert values["cti_recordings_missing_total"] == 1
    assert values["cti_ami_connected"] == 1 and values["cti_ami_logins"] == 1
    assert values["cti_ami_events_total"] > 0
    assert values["cti_live_calls"] == 0
    assert values["cti_hub_pops_total"] == values["cti_hub_pop_latency_seconds_count"] == 4  # 101; 101; 101, 102
    assert values['cti_hub_pop_latency_seconds_bucket{le="+Inf"}'] == 4
    assert values["cti_hub_connected_agents"] == 0  # her tab is closed
    assert values["cti_hub_slow_clients_dropped_total"] == 0
    assert values["cti_callbacks_escalated_total"] == 0
    assert values["cti_event_loop_lag_seconds"] >= 0
    assert_names_nobody(text)


async def test_queue_and_inbox_depth_show_requests_stored_but_not_processed(tmp_path: Path) -> None:
    # A gateway whose consumer never runs: every 2xx'd request waits, in memory and on disk.
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA,
                       consume_webhooks=False) as h:
        async with aiohttp.ClientSession() as http:
            for name in MISSED:
                assert (await post(http, h, name))[0] == 200
        await h.metrics.count_backlogs(h.store)
        values = samples(await scrape(h))
    assert values["cti_webhook_queue_depth"] == 4
    assert values["cti_webhook_inbox_pending"] == 4
    assert values['cti_webhook_requests_total{provider="zadarma",result="accepted"}'] == 4


async def test_loop_lag_shows_a_blocked_loop(h: Harness) -> None:
    watch = asyncio.create_task(h.metrics.watch(h.store, lag_every=0.01, count_every=3600))
    try:
        await asyncio.sleep(0.05)
        assert samples(await scrape(h))["cti_event_loop_lag_seconds"] >= 0
        time.sleep(0.15)  # blocks the loop on purpose: what the gauge is for
        await asyncio.sleep(0.05)  # the watch wakes up late once
        assert samples(await scrape(h))["cti_event_loop_lag_seconds"] >= 0.1
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


# -- the dashboard --------------------------------------------------------------------------------

# PromQL words that are not metric names (functions and aggregations are told by their "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana's variables ($__rate_interval, $instance)
    names = set()
    for found in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[found.end():].lstrip().startswith("(") or found[0].lower() in KEYWORDS:
            continue
        names.add(found[0])
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Metric name -> titles of the panels (or variables) that use it."""
    used: dict[str, set[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                used.setdefault(name, set()).add(panel["title"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if variable["type"] == "query":
            found = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,\s*\w+\s*\)\s*", text)
            assert found, (variable["name"], text)
            used.setdefault(found[1], set()).add(f"${variable['name']}")
    return used


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(cti_hub_pop_latency_seconds_bucket{instance=~"$instance"}'
            '[$__rate_interval]))) / ignoring(x) sum(cti_live_calls offset 5m) > bool 1e3 or vector(0)')
    assert metric_names(expr) == {"cti_hub_pop_latency_seconds_bucket", "cti_live_calls"}


# A CRM sink nobody answers (the discard port is closed): its labelled families get series.
UNANSWERED_CRM = CrmConfig(sinks=(SinkEntry("webhook", "erp", WebhookSinkConfig("erp", "http://127.0.0.1:9/", "x" * 24)),))


async def test_the_dashboard_shows_every_family_and_names_only_what_exists(tmp_path: Path) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA,
                       crm=UNANSWERED_CRM, deliver_crm=False) as h:
        await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))  # a call: its labelled counter has a series
        await h.wait_records(1)
        await h.gateway.drain()
        await h.bridge.drain()
        assert await h.bridge.round("erp")  # refused: one retry counted
        await h.metrics.count_backlogs(h.store)
        text = await scrape(h)
    parsed = list(text_string_to_metric_families(text))
    names = {family.name for family in parsed}

    def base(name: str) -> str:
        """The text format shows a counter's or histogram's _created as a gauge family of its own."""
        stem = name.removesuffix("_created")
        return stem if stem != name and stem in names else name

    families = {family.name: family.type for family in parsed if base(family.name) == family.name}
    family_of = {sample.name: base(family.name) for family in parsed for sample in family.samples}

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"], panel["title"]

    used = dashboard_metrics(dashboard)
    unknown = {name: titles for name, titles in used.items() if name not in family_of}
    assert not unknown, f"the dashboard names metrics the gateway does not expose: {unknown}"
    shown = {family_of[name] for name in used}
    assert set(families) - shown == set(), "families without a panel"
    assert all(name.startswith("cti_") for name in families)  # a registry of its own: nothing else

    docs = DOCS.read_text(encoding="utf-8")
    for name, kind in families.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"`{exposed}`" in docs, f"{exposed} is not documented in dashboards/README.md"
