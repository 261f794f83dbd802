"""What a person sees of a local run: live progress, metrics.jsonl, a summary table and a plot."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kuberl_workers.config import TRAINER_STAT_FIELDS


@dataclass
class Progress:
    job: str
    steps: int
    step: int = 0
    reward: float = 0.0
    tokens_per_second: float = 0.0
    budget_fill: float = 0.0
    ready: int = 0
    desired: int = 0
    restarts: int = 0
    eta: float = math.inf
    state: str = "starting"


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class Display:
    """A rich live panel on a terminal; one structured log line per change otherwise (CI, pipes)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._live: Any = None
        self._last = ""
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=stream), refresh_per_second=4, transient=False)
            self._live.start()

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, p: Progress) -> None:
        if self._live is not None:
            from rich.table import Table

            table = Table(title=f"kuberl run: {p.job} ({p.state})", show_header=True)
            for column in ("step", "reward", "tokens/s", "rollouts", "budget", "restarts", "ETA"):
                table.add_column(column, justify="right")
            table.add_row(
                f"{p.step}/{p.steps}",
                f"{p.reward:.3f}",
                f"{p.tokens_per_second:.0f}",
                f"{p.ready}/{p.desired}",
                f"{p.budget_fill:.0%}",
                str(p.restarts),
                _eta(p.eta),
            )
            self._live.update(table)
            return
        line = (
            f"job={p.job} state={p.state} step={p.step}/{p.steps} reward={p.reward:.3f} "
            f"tokens_per_s={p.tokens_per_second:.0f} rollouts={p.ready}/{p.desired} budget={p.budget_fill:.2f} "
            f"restarts={p.restarts} eta={_eta(p.eta)}"
        )
        key = f"{p.state} {p.step} {p.restarts}"  # one line per step (or state change), not per poll
        if key != self._last:
            self._last = key
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


TRAINER_STATS = (
    "groups",
    "completions",
    "completionTokensMean",
    "completionTokensMax",
    "truncatedFraction",
    "rewardStd",
    "zeroAdvantageGroups",
    "policyVersionsSpannedMax",
    "oldestPolicyVersion",
    "rolloutsPurged",
    "scores",
    *TRAINER_STAT_FIELDS,
)
"""Per-step fields of the controller's history (rollout side: controller/service.py; trainer side: its stats)
copied into metrics.jsonl when present."""


class SampleLog:
    """samples.jsonl: the controller's sample records (prompt, completion, reward, finish reason, versions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_step = 0
        if path.exists():  # a resumed run appends after what it has
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
            self.last_step = max(steps, default=0)

    def add(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append the records of steps not written yet; returns the first record of each new step."""
        fresh = [r for r in records if r.get("step", 0) > self.last_step]
        if not fresh:
            return []
        with self.path.open("a") as handle:
            for record in fresh:
                handle.write(json.dumps(record) + "\n")
        firsts: dict[int, dict[str, Any]] = {}
        for record in fresh:
            firsts.setdefault(record["step"], record)
        self.last_step = max(firsts)
        return list(firsts.values())

    @staticmethod
    def line(record: dict[str, Any], width: int = 160) -> str:
        """One readable line: step, reward, finish reason, the prompt's end and the completion's start."""

        def flat(text: str, n: int) -> str:
            text = " ".join(str(text).split())
            return text if len(text) <= n else text[: n - 1] + "…"

        return (
            f"  sample step {record['step']} reward {record['reward']:.2f} ({record['finishReason']}, "
            f"{record.get('completionTokens', '?')} tokens) answer {flat(record['answer'], 20)!r}: "
            f"{flat(record['completion'], width)!r}"
        )


class MetricsLog:
    """metrics.jsonl: one JSON object per trained step, each step once. A step trained again (after a restore
    from a checkpoint) replaces its old row and those after it; the first row after a restart is marked
    `afterRestart` and has no stepSeconds (the downtime is no step's time).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():  # a resumed run continues it
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def add(self, row: dict[str, Any]) -> None:
        row = {"time": time.time(), **row}
        if self.rows and self.rows[-1]["step"] >= row["step"]:
            self.rows = [r for r in self.rows if r["step"] < row["step"]]
            self.rows.append(row)
            staging = self.path.with_suffix(".jsonl.tmp")
            staging.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            staging.replace(self.path)
            return
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def eval_summary(path: Path) -> list[tuple[str, str]]:
    """The held-out evaluation's first and last rounds (spec.eval), as one summary line; none without rounds."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    if not rows:
        return []
    first, last = rows[0], rows[-1]
    return [
        (
            "eval",
            f"reward {first['rewardMean']:.3f} -> {last['rewardMean']:.3f}, pass@1 {first['passAt1']:.3f} -> "
            f"{last['passAt1']:.3f} (policy versions {first['policyVersion']} -> {last['policyVersion']}, "
            f"{last['prompts']} held-out prompts; {path})",
        )
    ]


def summary(rows: list[dict[str, Any]], wall_seconds: float, restarts: int) -> list[tuple[str, str]]:
    rewards = [r["rewardMean"] for r in rows]
    first, last = rewards[:5], rewards[-5:]
    seconds = [r["stepSeconds"] for r in rows if r.get("stepSeconds")]
    return [
        ("steps trained", str(rows[-1]["step"] if rows else 0)),
        ("wall time", _eta(wall_seconds)),
        ("mean reward, first 5 steps", f"{statistics.fmean(first):.3f}" if first else "-"),
        ("mean reward, last 5 steps", f"{statistics.fmean(last):.3f}" if last else "-"),
        ("median step time", f"{statistics.median(seconds):.1f}s" if seconds else "-"),
        ("rollout tokens/s (last)", f"{rows[-1]['tokensPerSecond']:.0f}" if rows else "-"),
        ("restarts", str(restarts)),
    ]


def print_summary(display: Display, items: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in items)
    display.message("\n".join(f"  {k.ljust(width)}  {v}" for k, v in items))


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """reward and step time per step, as a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, [r["rewardMean"] for r in rows], marker="o", markersize=3)
    top.set_ylabel("mean reward")
    top.grid(alpha=0.3)
    bottom.bar(steps, [r.get("stepSeconds") or 0 for r in rows], color="tab:orange")
    for restart in (r["step"] for r in rows if r.get("afterRestart")):  # downtime is marked, not a step's time
        for axis in (top, bottom):
            axis.axvline(restart - 0.5, color="tab:red", linestyle="--", linewidth=1)
    bottom.set_ylabel("step time (s)")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    fig.suptitle("kuberl run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
