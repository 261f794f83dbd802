"""Every benchmark runs in its --quick mode and writes a well-formed result (a smoke test, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("BENCHES :=")]
NAMES = BENCHES[0].split(":=", 1)[1].split()


def test_every_bench_module_is_run_by_make_bench() -> None:
    modules = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")} - {"__init__", "common"}
    assert modules == set(NAMES), "bench modules and the Makefile's BENCHES differ"


# Quick modes that take over a minute on two cores (real engines and models): `pytest -m slow` and `make
# bench-quick` run them; `make test` keeps its 30-minute budget. The parts they drive have their own tests
# (tests/integration/test_real_model.py, the e2e tier's fault recovery).
SLOW = {"c3po_real", "trainer_real", "recovery", "baselines"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES], ids=NAMES
)
def test_quick_mode_runs_and_writes_its_result(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(tmp_path), "--plots", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    document: dict[str, Any] = json.loads((tmp_path / f"{name}.json").read_text())
    assert document["benchmark"] == name and document["quick"] is True
    assert document["machine"]["cpus"]
    tables = document["tables"]
    assert tables and all(rows for rows in tables.values()), f"empty table in {name}"
    assert document["headline"], f"{name} states no headline"
    check = CHECKS.get(name)
    if check is not None:
        check(document)


CHECKS: dict[str, Any] = {}
