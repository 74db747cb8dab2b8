"""What every benchmark hands back: figures with the baseline measured in the
same run and the target they are judged against, and the two ways of printing
them (a plain table for the terminal, a Markdown table for the README).

A benchmark module exposes ``parse_args(argv)`` and ``figures(args)``: the
latter runs it, prints its own detail, and returns its ``Figure`` list, so
``python -m bench`` can run them all and print one table. A correctness check
that fails raises ``CheckFailed``: a figure measured on wrong results is not
printed at all.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]


class CheckFailed(Exception):
    """The benchmark's results were wrong (lost, doubled or misrouted calls...)."""


@dataclass(frozen=True)
class Target:
    op: Literal["<", ">=", "=="]
    limit: float
    source: str = ""  # where the target comes from: "issue 4", "DESIGN.md"

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.op == "<":
            return value < self.limit
        if self.op == ">=":
            return value >= self.limit
        return value == self.limit


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``ratio`` defaults to value / baseline; a figure
    that is itself a ratio passes it (and its baseline's own unit)."""

    name: str
    value: float
    unit: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    baseline_unit: str | None = None
    ratio: float | None = None
    target: Target | None = None
    note: str = ""  # printed under the Markdown table when the target is missed
    is_check: bool = False  # a correctness count: missing its target fails the run

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.holds(self.value)

    @property
    def ratio_value(self) -> float | None:
        if self.ratio is not None:
            return self.ratio
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.value / self.baseline


def number(value: float) -> str:
    """Three significant figures or so, thousands separated: 0.963, 14.9, 429,000."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _with_unit(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x" if abs(value) < 10 else f"{number(value)}x"
    if not unit and float(value).is_integer():
        return f"{value:,.0f}"  # a count
    return f"{number(value)} {unit}".rstrip()


def _ratio(ratio: float | None) -> str:
    if ratio is None or math.isnan(ratio) or ratio <= 0:
        return "-"
    return f"1/{1 / ratio:,.0f}" if ratio < 0.1 else _with_unit(ratio, "x")  # 1/98: a 98th of the baseline


def cells(figure: Figure) -> list[str]:
    """figure, value, baseline, ratio, target, met."""
    baseline = "-"
    if figure.baseline is not None:
        unit = figure.unit if figure.baseline_unit is None else figure.baseline_unit
        baseline = f"{figure.baseline_name} {_with_unit(figure.baseline, unit)}".strip()
    ratio = figure.ratio_value
    target = "-"
    if figure.target is not None:
        t = figure.target
        limit = f"{t.limit:,.0f}" if float(t.limit).is_integer() else number(t.limit)
        target = f"{t.op} {limit}{'x' if figure.unit == 'x' else ' ' + figure.unit}".rstrip() \
            + (f" ({t.source})" if t.source else "")
    met = {None: "-", True: "yes", False: "NO"}[figure.met]
    return [figure.name, _with_unit(figure.value, figure.unit), baseline,
            _ratio(ratio), target, met]


HEADER = ["figure", "value", "baseline (same run)", "ratio", "target", "met"]


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def render(figures: Iterable[Figure]) -> str:
    """The plain table every benchmark prints last."""
    return table([cells(f) for f in figures], HEADER)


def markdown(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The tree measured: the commit, and whether it had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def run_alone(figures_of: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """A benchmark module run on its own: its figures, or exit status 1 with the check that failed."""
    try:
        figures_of(args)
    except CheckFailed as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
