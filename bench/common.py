"""Shared benchmark plumbing: arguments, the machine description, tables, JSON results and plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PLOTS = ROOT / "docs" / "bench"
# the emulated cluster and test kubelet live with the tests; the cluster benchmarks reuse them
sys.path.insert(0, str(ROOT / "tests"))


def arguments(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """--quick (the smoke-test size, seconds not minutes), --out (results folder), --plots (PNG folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs, not a result")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument("--plots", type=Path, default=PLOTS, help="folder for PNG plots")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per measurement (default per bench)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the docs quote it next to every table)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": _cpu_model(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_gib"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of repeated measurements (min is the least disturbed by a noisy machine)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    end: list[float] = []
    try:
        yield lambda: (end[0] if end else time.perf_counter()) - start
    finally:
        end.append(time.perf_counter())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (floats to 3 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, args: argparse.Namespace, result: dict[str, Any]) -> Path:
    """Print the result's tables and write bench/results/<name>.json (with the machine and the mode)."""
    document = {"benchmark": name, "quick": bool(args.quick), "machine": machine(), **result}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    target: Path = Path(args.out) / f"{name}.json"
    target.write_text(json.dumps(document, indent=2, default=str) + "\n")
    for title, rows in (result.get("tables") or {}).items():
        print(f"\n### {name}: {title}\n\n{table(rows)}")
    for line in result.get("headline") or []:
        print(f"- {line}")
    print(f"\nwrote {target}")
    return target
