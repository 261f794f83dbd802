"""The kopf entry point registers the handlers and startup settings, and stays thin."""

from __future__ import annotations

import ast
import urllib.request
from pathlib import Path

import kopf
import pytest

import kuberl_operator.main as main
from kuberl_operator.cli import main as cli
from kuberl_operator.settings import Settings
from support.net import free_port


def test_handlers_registered_for_rljobs() -> None:
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()  # create / update / resume
    timers = registry._spawning.get_all_handlers()
    assert {getattr(h.fn, "__name__", "") for h in changing} == {"on_change", "on_delete"}
    assert {getattr(h.fn, "__name__", "") for h in timers} == {"on_timer", "on_scaler"}
    handlers = [*changing, *timers]
    resources = {(h.selector.group, h.selector.version, h.selector.plural) for h in handlers if h.selector}
    assert ("kuberl.io", "v1alpha1", "rljobs") in resources


async def test_startup_settings_and_metrics_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(main, "SETTINGS", Settings.from_env({"KUBERL_OPERATOR_METRICS_PORT": str(port)}))
    settings = kopf.OperatorSettings()
    await main.startup(settings=settings)  # type: ignore[call-arg,misc]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in (
        "kuberl_operator_reconciles",
        "kuberl_operator_reconcile_seconds",
        "kuberl_operator_replicas",
        "kuberl_operator_scaling_decisions",
        "kuberl_operator_job_condition",
    ):
        assert f"# HELP {name}" in text
    assert settings.persistence.finalizer == "kuberl.io/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "kuberl.io"
    assert settings.watching.server_timeout == 300
    # a timer busy at deletion time must not hold the finalizer for kopf's default 60 s re-check (CI caught this)
    assert settings.background.cancellation_polling <= 2


def test_main_stays_thin() -> None:
    """Every handler body is a single delegating statement (crate-operator's style)."""
    tree = ast.parse(Path(main.__file__).read_text())
    for fn in (n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name.startswith("on_")):
        assert len(fn.body) == 1, fn.name


def test_operator_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["operator", "--help"])
    assert "--standalone" in capsys.readouterr().out


def test_a_deleted_jobs_series_are_dropped() -> None:
    """A Failed job that was deleted must not keep its alert firing: its series go with it."""
    from prometheus_client import generate_latest

    from kuberl_operator import metrics

    status = {
        "conditions": [{"type": "Failed", "status": "True"}],
        "roles": [{"name": "rollout", "desired": 2, "ready": 1, "restarts": 3}],
    }
    metrics.observe_status("gone", "ns", status)
    metrics.observe_status("kept", "ns", status)
    metrics.forget("gone", "ns")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'job="gone"' not in text
    assert 'kuberl_operator_job_condition{condition="Failed",job="kept",namespace="ns"} 1.0' in text
    assert 'kuberl_operator_restarts{job="kept",namespace="ns",role="rollout"} 3.0' in text
