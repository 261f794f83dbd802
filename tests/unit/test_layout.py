"""Project layout rules: import boundaries, no heavy imports in the operator, generated docs in sync."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

from kuberl_operator.api.explain import api_markdown

ROOT = Path(__file__).resolve().parents[2]


def _imports(package_dir: Path) -> set[tuple[Path, str]]:
    found = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {(path, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((path, node.module))
    return found


def test_no_top_level_package_shadows_the_stdlib() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "workers" / "__init__.py").exists()
    assert (ROOT / "operator" / "kuberl_operator" / "__init__.py").exists()
    assert (ROOT / "workers" / "kuberl_workers" / "__init__.py").exists()


def test_workers_never_import_the_operator() -> None:
    offenders = [(str(p), m) for p, m in _imports(ROOT / "workers") if m.split(".")[0] == "kuberl_operator"]
    assert offenders == []


def test_operator_imports_only_the_workers_pure_contract() -> None:
    # config: the worker config and env contract; catalog: built-in names; published: the layout of published
    # model versions on a checkpoint volume (`kuberl export` reads it). All three are stdlib + pydantic only.
    allowed = {"kuberl_workers", "kuberl_workers.catalog", "kuberl_workers.config", "kuberl_workers.published"}
    used = {m for _, m in _imports(ROOT / "operator") if m.split(".")[0] == "kuberl_workers"}
    assert used <= allowed, used - allowed


def test_importing_the_operator_loads_no_torch_or_vllm() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT / "operator").with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "operator" / "kuberl_operator").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers'))\n"
        "print(len(sys.modules), heavy)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert len(modules) >= 8


def test_api_reference_in_sync() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == api_markdown(), "docs/api.md is stale: run `make crd`"


def test_api_reference_documents_every_field() -> None:
    from kuberl_operator.api.crd import openapi_schema

    text = (ROOT / "docs" / "api.md").read_text()

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert f"| `{name}` |" in text, f"{path}.{name} undocumented"
            assert sub.get("description") or name == "metadata", f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(openapi_schema(), "")


def test_operations_guide_documents_every_condition_event_reason_and_metric() -> None:
    """docs/operations.md must name every condition type, event reason and operator metric the code emits."""
    from prometheus_client.metrics import MetricWrapperBase

    from kuberl_operator import metrics, policy
    from kuberl_operator.api import conditions

    guide = (ROOT / "docs" / "operations.md").read_text()
    reasons = [v for k, v in vars(policy).items() if k.isupper() and isinstance(v, str)] + [conditions.INVALID_SPEC]
    missing = [f"event {r}" for r in reasons if f"`{r}`" not in guide]
    missing += [f"condition {t}" for t in conditions.CONDITION_TYPES if f"`{t}`" not in guide]
    for metric in (v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)):
        suffix = "_total" if metric._type == "counter" else ""
        if f"`{metric._name}{suffix}`" not in guide:
            missing.append(f"metric {metric._name}{suffix}")
    assert missing == []
