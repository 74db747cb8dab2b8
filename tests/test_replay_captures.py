"""Every call scenario captured from a real Asterisk 22 gives the record the
captures' README promises, through the ``replay`` command and its pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.replay import replay_capture
from tests.conftest import CAPTURES

# scenario: (direction, caller, dialled, outcome, answered_by, rang, talked)
EXPECTED = {
    "a_answered": ("inbound", "+79161110001", "+74950000001", "answered", "101", ["101"], ["101"]),
    "b_missed": ("inbound", "+79161110002", "+74950000001", "missed", None, ["101"], []),
    "c_abandoned_ringing": ("inbound", "+79161110003", "+74950000001", "abandoned", None, ["101"], []),
    "e_queue_answered": ("inbound", "+79161110005", "+74950000003", "answered", "102", ["101", "102"], ["102"]),
    "f_queue_abandoned": ("inbound", "+79161110006", "+74950000003", "abandoned", None, ["101", "102"], []),
    "g_click_to_call": ("outbound", "101", "+79161110007", "answered", None, [], []),
    "h1_blind_transfer": ("inbound", "+79161110008", "+74950000001", "answered", "101", ["101", "102"], ["101", "102"]),
    "i_busy": ("inbound", "+79161110009", "+74950000001", "missed", None, ["101"], []),
    "j_agi_route": ("inbound", "+79161110013", "+74950000004", "answered", "103", ["103"], ["103"]),
    "k_agi_fallback": ("inbound", "+79161110012", "+74950000004", "answered", "101", ["101", "102"], ["101"]),
}


def _summary(record: dict[str, object]) -> tuple[object, ...]:
    keys = ("direction", "caller", "dialled", "outcome", "answered_by", "rang", "talked")
    return tuple(record[k] for k in keys)


@pytest.mark.parametrize("suffix", [".ami", ".jsonl"])
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_capture_gives_one_true_record(scenario: str, suffix: str) -> None:
    records = [r.to_json() for r in replay_capture(CAPTURES / f"{scenario}{suffix}")]
    assert len(records) == 1, records
    (record,) = records
    assert _summary(record) == EXPECTED[scenario]
    assert record["ended"] is True and record["interrupted"] is False
    assert record["call_id"]


def test_jsonl_times_come_from_the_capture() -> None:
    (record,) = [r.to_json() for r in replay_capture(CAPTURES / "a_answered.jsonl")]
    # Newchannel at _t 1795736348.72..., DialEnd ANSWER about 2 s later, Hangup 3 s after that.
    assert record["started_at"].startswith("2026-11-26T23:39:08")
    assert record["ring_seconds"] == pytest.approx(2.0, abs=0.1)
    assert record["talk_seconds"] == pytest.approx(3.0, abs=0.1)
    assert record["recording_path"].endswith("-1795736348.0.wav")


def test_abandoned_keeps_the_wait_and_missed_says_why() -> None:
    (abandoned,) = [r.to_json() for r in replay_capture(CAPTURES / "f_queue_abandoned.jsonl")]
    assert abandoned["ring_seconds"] == pytest.approx(12.0, abs=0.2)
    assert abandoned["reason"] == "caller_hung_up"
    (busy,) = [r.to_json() for r in replay_capture(CAPTURES / "i_busy.jsonl")]
    assert busy["reason"] == "busy"


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_replay_command_prints_one_json_object_per_call(tmp_path: Path) -> None:
    # Two captures back to back in one JSON array: two records, in the order they ended.
    items = []
    for name in ("a_answered", "i_busy"):
        items += [json.loads(line) for line in (CAPTURES / f"{name}.jsonl").read_text().splitlines()]
    capture = tmp_path / "two.json"
    capture.write_text(json.dumps(items))
    result = _run_cli("replay", str(capture))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["outcome"] for line in lines] == ["answered", "missed"]


def test_replay_prints_open_calls_last_with_ended_false(tmp_path: Path) -> None:
    lines = (CAPTURES / "a_answered.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"Event": "BridgeEnter"' in line)
    capture = tmp_path / "cut.jsonl"
    capture.write_text("\n".join(lines[: cut + 1]) + "\n")
    result = _run_cli("replay", str(capture))
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["ended"] is False and record["ended_at"] is None
    assert record["answered_by"] == "101" and record["outcome"] == "answered"


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b'{"Event": "Newchannel"}\n{not json\n', "line 2"),
        (b"\x00\x01\x02 binary junk", "byte 0"),
        (b'[{"Event": "Hangup", "Cause": {"x": 1}}]', "item 0"),
    ],
)
def test_replay_refuses_unreadable_input_naming_the_place(tmp_path: Path, content: bytes, where: str) -> None:
    capture = tmp_path / "bad.capture"
    capture.write_bytes(content)
    result = _run_cli("replay", str(capture))
    assert result.returncode == 2
    assert where in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
