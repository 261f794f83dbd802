"""The chart's alerts and Grafana dashboard, checked by helm and promtool; their series exist in the metric code."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.prometheus import (
    ALERT_TESTS,
    CHART,
    DASHBOARD,
    alert_exprs,
    alert_rules,
    dashboard,
    dashboard_queries,
    metric_names,
    panels,
    promtool,
    render_chart,
    substitute,
    used_metric_names,
)

ALERTS = {
    "KuberlJobFailed",
    "KuberlRestartStorm",
    "KuberlRolloutPoolBelowMin",
    "KuberlBudgetFillStalled",
    "KuberlIcePopMaskFractionHigh",
}
PANELS = {
    "Reward (mean)",
    "Reward distribution",
    "Rollout tokens/s",
    "Token budget fill",
    "Rollout replicas: desired vs ready",
    "Staleness: policy versions spanned",
    "IcePop masked fraction",
    "|log π_train \N{MINUS SIGN} log π_infer|",
    "Step time by phase",
    "Weight sync seconds",
    "Restarts by role",
    "Scaling decisions",
    "Operator reconcile errors",
}
# the operator's own counters: no job label to filter by
UNSCOPED = {"kuberl_operator_reconciles_total", "kuberl_operator_reconcile_seconds_bucket"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return alert_rules()


def test_rules_and_dashboard_render_only_when_enabled() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for d in render_chart()]
    assert ("PrometheusRule", "t-kuberl") not in kinds and ("ConfigMap", "t-kuberl-dashboard") not in kinds
    docs = render_chart(
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prom",
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.annotations.grafana_folder=kuberl",
    )
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["name"] == "t-kuberl"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "t"
    board = next(d for d in docs if d["kind"] == "ConfigMap" and "kuberl.json" in d.get("data", {}))
    assert board["metadata"]["namespace"] == "monitoring"
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"] == {"grafana_folder": "kuberl"}
    assert json.loads(board["data"]["kuberl.json"]) == dashboard()
    default_ns = render_chart("grafanaDashboard.enabled=true")
    assert next(d for d in default_ns if d["kind"] == "ConfigMap")["metadata"]["namespace"] == "default"


def test_alert_rules_pass_promtool_check(rules: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert set(alert_exprs(rules)) == ALERTS
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            for annotation in ("summary", "description"):
                text = rule["annotations"][annotation]
                assert "$labels.namespace" in text and "$labels.job" in text, (rule["alert"], annotation)


def test_alert_rules_pass_their_promtool_unit_tests(rules: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    assert "SUCCESS" in promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert firing == ALERTS and silent == ALERTS


def test_dashboard_has_the_variables_and_panels() -> None:
    board = dashboard()
    assert (board["uid"], board["title"]) == ("kuberl", "kuberl") and board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        assert variables[name]["type"] == "query" and variables[name]["query"]["query"].startswith("label_values(")
    assert {p["title"] for p in panels(board)} >= PANELS
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_queries_filter_by_namespace_and_job_and_use_the_rate_interval() -> None:
    for title, expr in dashboard_queries(dashboard()).items():
        if title.startswith("variable"):
            continue
        for match in re.finditer(r"(kuberl_[a-z0-9_]+)(\{[^}]*\})?", expr):
            name, selector = match[1], match[2] or ""
            if name in UNSCOPED:
                continue
            assert 'namespace=~"$namespace"' in selector and 'job=~"$job"' in selector, (title, name)
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", (title, window)


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    rules = [
        {"record": f"kuberl_dashboard:query_{i}", "expr": substitute(expr, "ns-a|ns-b", "e2e", "1m")}
        for i, expr in enumerate(queries.values())
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(tmp_path / "dashboard.yaml"))


def test_every_series_the_dashboard_and_alerts_read_is_defined(tmp_path: Path) -> None:
    """Against the metric definitions in the code; tests/e2e checks the same against the live /metrics."""
    defined = _defined_names(tmp_path)
    missing = {name: sorted(where) for name, where in used_metric_names().items() if name not in defined}
    assert not missing
    assert metric_names('rate(kuberl_reward_bucket{job=~"kuberl_x"}[1m])') == {"kuberl_reward_bucket"}


def test_monitoring_values_are_documented() -> None:
    """helm-docs: every value of the monitoring section has a `# --` comment on the line above it (or above the
    map it belongs to, as `labels:` documents its default entries)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ---- monitoring"))
    section = lines[start + 1 :]
    documented_map = None  # indentation of a documented map whose entries need no comment of their own
    for i, line in enumerate(section):
        key = re.match(r"^(\s*)[\w.]+:(.*)$", line)
        if key is None:
            continue
        indent, documented = len(key[1]), section[i - 1].strip().startswith("# --")
        if documented_map is not None and indent > documented_map:
            continue
        documented_map = indent if documented and not key[2].strip() else None
        assert documented or not key[2].strip(), f"values.yaml: undocumented {line.strip()!r}"
    assert DASHBOARD.relative_to(CHART) == Path("dashboards/kuberl.json")


def _names(registry: Any) -> set[str]:
    return {m.name + suffix for m in registry.collect() for suffix in SUFFIXES.get(m.type, ("",))}


def _defined_names(tmp_path: Path) -> set[str]:
    from kuberl_operator import metrics as operator_metrics
    from kuberl_workers.controller.rewards import numeric
    from kuberl_workers.controller.service import Controller
    from kuberl_workers.rollout.worker import RolloutWorker
    from kuberl_workers.tokenizer import ByteTokenizer
    from support.jobs import TOKEN, job_config

    cfg = job_config(tmp_path / "ckpt")
    controller = Controller(cfg, tokenizer=ByteTokenizer(), reward=numeric)
    worker = RolloutWorker(cfg, "http://127.0.0.1:1", TOKEN, "w", "127.0.0.1")
    names = _names(operator_metrics.REGISTRY) | _names(controller.metrics.registry) | _names(worker.registry)
    return names | _trainer_names()


def _trainer_names() -> set[str]:
    """The trainer builds its registry inside main() (after importing torch): read the definitions from its source.
    Gauges are made in a comprehension over a dict of names (f"kuberl_trainer_{name}"), histograms one by one."""
    source = Path(__file__).resolve().parents[2] / "workers" / "kuberl_workers" / "trainer" / "__main__.py"
    tree = ast.parse(source.read_text())
    keys = {k.value for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if isinstance(k, ast.Constant)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        suffixes = {"Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count"), "Counter": ("_total",)}
        first = node.args[0]
        for suffix in suffixes.get(node.func.id, ()):
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value + suffix)
            elif isinstance(first, ast.JoinedStr) and isinstance(prefix := first.values[0], ast.Constant):
                names |= {f"{prefix.value!s}{key}{suffix}" for key in keys if isinstance(key, str)}
    assert "kuberl_trainer_icepop_masked_fraction" in names and "kuberl_trainer_step_seconds_bucket" in names
    return names
