"""Every benchmark of the project in sequence, then one table: figure, value,
baseline measured in the same run, ratio, target, met or not.

Run from the repository root: ``.venv/bin/python -m bench [--only NAME,...]
[--quick] [--markdown [FILE]]``. Each benchmark's own detail goes to stderr;
stdout gets the table (or, with ``--markdown`` and no FILE, the Markdown the
README's performance section is made from). The sizes are cut to fit a
2-core machine in a few minutes (``SIZES``); each module run alone with its
defaults measures longer (bench/README.md). ``--quick`` is a smoke run at
toy sizes whose figures say nothing about the targets.

It also measures what else the machine did meanwhile (other processes' CPU,
load average), because on a shared machine the latency tails follow it. The
exit status is 1 when a benchmark failed or its correctness check did; a
missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import psutil  # type: ignore[import-untyped]

from bench import ami_throughput, pop_latency, recordings, reports, routing, webhooks
from bench.figures import HEADER, CheckFailed, Figure, cells, commit, machine, markdown, table

# name -> (module, argv for the full run, argv for --quick)
SIZES: dict[str, tuple[ModuleType, list[str], list[str]]] = {
    "ami_throughput": (ami_throughput, [], ["--messages", "20000", "--runs", "1"]),
    "pop_latency": (pop_latency, ["--seconds", "20"], ["--agents", "200", "--rate", "20", "--seconds", "3"]),
    "webhooks": (webhooks, [], ["--calls", "200", "--rounds", "1"]),
    "routing": (routing, ["--no-diagnosis"], ["--contacts", "10000", "--decisions", "500", "--rounds", "2",
                                               "--no-diagnosis"]),
    "reports": (reports, ["--runs", "2"], ["--calls", "20000", "--runs", "1"]),
    "recordings": (recordings, ["--minutes", "5", "--files", "2", "--rounds", "1"],
                   ["--minutes", "1", "--files", "1", "--players", "10", "--rounds", "1"]),
}
BUSY = 0.15  # other processes' average share of a core above which a benchmark's run is called busy


@dataclass
class Outcome:
    name: str
    argv: list[str]
    seconds: float = 0.0
    others: float = 0.0  # other processes' CPU meanwhile, share of a core
    figures: list[Figure] = field(default_factory=list)
    failure: str = ""


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _own_cpu() -> float:
    """This process and the children it has waited for (the gateway under test, ffmpeg)."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


class OtherCpu:
    """CPU that processes other than this one and its children used since ``start``."""

    def __init__(self) -> None:
        self.wall = self.seconds = 0.0
        self._marks = (time.perf_counter(), _busy_cpu(), _own_cpu())

    def stop(self) -> OtherCpu:
        wall0, busy0, own0 = self._marks
        self.wall = time.perf_counter() - wall0
        self.seconds = max(0.0, (_busy_cpu() - busy0) - (_own_cpu() - own0))
        return self

    @property
    def share(self) -> float:
        """Of one core, on average."""
        return self.seconds / self.wall if self.wall else 0.0


@dataclass
class Machine:
    """What the machine was and what else it did while the benchmarks ran."""

    description: str = field(default_factory=machine)
    tree: str = field(default_factory=commit)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])
    load_after: float = 0.0
    others: OtherCpu = field(default_factory=OtherCpu)

    def stop(self) -> None:
        self.others.stop()
        self.load_after = os.getloadavg()[0]

    def summary(self, outcomes: Sequence[Outcome]) -> str:
        share = self.others.share
        busy = [f"{o.name} {o.others:.0%}" for o in outcomes if o.others > BUSY]
        verdict = (f" The machine was busy during {', '.join(busy)} (of a core): their latency tails measure the "
                   "other processes too; re-run on a quiet machine." if busy else "")
        return (f"Machine: {self.description}. Tree at {self.tree}. Run at {self.started:%Y-%m-%d %H:%M} UTC, "
                f"{self.others.wall / 60:.1f} min; load average {self.load_before:.2f} before, "
                f"{self.load_after:.2f} after; other processes used {share:.0%} of a core on average.{verdict}")


def run(name: str, module: ModuleType, argv: list[str]) -> Outcome:
    outcome = Outcome(name, argv)
    print(f"\n===== {name}: python -m bench.{name} {' '.join(argv)}", flush=True)
    others = OtherCpu()
    figures: Callable[[argparse.Namespace], list[Figure]] = module.figures
    try:
        outcome.figures = figures(module.parse_args(argv))
    except CheckFailed as exc:
        outcome.failure = f"check failed: {str(exc).splitlines()[0]}"
        print(exc, flush=True)
    except Exception as exc:  # one broken benchmark must not hide the others' figures
        outcome.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc(file=sys.stdout)
    others.stop()
    outcome.seconds, outcome.others = others.wall, others.share
    print(f"===== {name}: {outcome.seconds:.0f} s; other processes used {outcome.others:.0%} of a core", flush=True)
    gc.collect()  # the previous benchmark's data must not land in the next one's collections
    return outcome


def rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    out = []
    for o in outcomes:
        if o.failure:
            out.append([o.name, f"FAILED: {o.failure}", "-", "-", "-", "-", "NO"])
        out += [[o.name, *cells(f)] for f in o.figures]
    return out


def notes(outcomes: Sequence[Outcome]) -> list[str]:
    """Why a target was missed, where the benchmark knows; one line per reason."""
    missed: dict[str, list[str]] = {}
    for f in (f for o in outcomes for f in o.figures if f.met is False and f.note):
        missed.setdefault(f.note, []).append(f.name)
    return [f"{'; '.join(names)}: {note}" for note, names in missed.items()]


def plain(outcomes: Sequence[Outcome], box: Machine, quick: bool) -> str:
    lines = [box.summary(outcomes)]
    if quick:
        lines.append("QUICK RUN: toy sizes, the figures say nothing about the targets.")
    lines += ["", table(rows(outcomes), ["bench", *HEADER])]
    lines += [f"  - {n}" for n in notes(outcomes)]
    return "\n".join(lines)


def as_markdown(outcomes: Sequence[Outcome], box: Machine, quick: bool) -> str:
    met = [f.met for o in outcomes for f in o.figures if f.met is not None]
    failed = [o.name for o in outcomes if o.failure]
    parts = [
        "Generated by `.venv/bin/python -m bench --markdown` (every benchmark in sequence, each with a baseline "
        "measured in the same run; `bench/README.md` explains each figure and each module's own, longer run).",
        "",
        box.summary(outcomes),
    ]
    if quick:
        parts += ["", "**Quick run: toy sizes; the figures say nothing about the targets.**"]
    parts += ["", markdown(rows(outcomes), ["bench", *HEADER]), "",
              f"Targets met: {sum(bool(m) for m in met)} of {len(met)}."
              + (f" Failed to run: {', '.join(failed)}." if failed else "")]
    if notes(outcomes):
        parts += ["", "Targets missed:", ""] + [f"- {n}" for n in notes(outcomes)]
    parts += ["", "Sizes of this run (each module alone: `.venv/bin/python -m bench.<name> ...`):", ""]
    parts += [f"- `{o.name}` {' '.join(o.argv) or '(defaults)'}: {o.seconds:.0f} s, other processes "
              f"{o.others:.0%} of a core" for o in outcomes]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated, among {', '.join(SIZES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run, not a measurement")
    parser.add_argument("--markdown", nargs="?", const="-", default=None, metavar="FILE",
                        help="Markdown for the README: to FILE (the plain table still goes to stdout), "
                             "or to stdout instead of the plain table")
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(SIZES)
    unknown = [n for n in chosen if n not in SIZES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose among {', '.join(SIZES)}")
    args.chosen = chosen
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    box = Machine()
    outcomes = []
    with contextlib.redirect_stdout(sys.stderr):  # the detail; stdout keeps only the result
        for name in args.chosen:
            module, full, quick = SIZES[name]
            outcomes.append(run(name, module, quick if args.quick else full))
    box.stop()
    if args.markdown == "-":
        print(as_markdown(outcomes, box, args.quick), end="")
    else:
        print(plain(outcomes, box, args.quick))
        if args.markdown is not None:
            Path(args.markdown).write_text(as_markdown(outcomes, box, args.quick), encoding="utf-8")
    wrong = any(f.is_check and f.met is False for o in outcomes for f in o.figures)
    sys.exit(1 if wrong or any(o.failure for o in outcomes) else 0)


if __name__ == "__main__":
    main()
