"""The operator's environment contract: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from kuberl_operator.builders import DEFAULT_WORKER_IMAGE
from kuberl_operator.cli import main as cli
from kuberl_operator.settings import Settings, SettingsError


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.worker_image == DEFAULT_WORKER_IMAGE and not settings.network_policy
    assert (settings.metrics_port, settings.resync_seconds) == (8080, 10.0)


def test_values_the_chart_sets() -> None:
    settings = Settings.from_env(
        {
            "KUBERL_WORKER_IMAGE": "ghcr.io/kuberl/worker-cpu:0.1.0",
            "KUBERL_NETWORK_POLICY": "true",
            "KUBERL_OPERATOR_NAMESPACE": "kuberl-system",
            "KUBERL_NETWORK_POLICY_METRICS_FROM": '[{"namespaceSelector": {}}]',
            "KUBERL_OPERATOR_RESYNC_SECONDS": "2.5",
        }
    )
    assert settings.network_policy and settings.operator_namespace == "kuberl-system"
    assert settings.metrics_from == [{"namespaceSelector": {}}] and settings.resync_seconds == 2.5


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KUBERL_NETWORK_POLICY": "yes please"}, "KUBERL_NETWORK_POLICY"),
        ({"KUBERL_NETWORK_POLICY_METRICS_FROM": "{not json"}, "KUBERL_NETWORK_POLICY_METRICS_FROM: not JSON"),
        ({"KUBERL_NETWORK_POLICY_METRICS_FROM": '{"a": 1}'}, "KUBERL_NETWORK_POLICY_METRICS_FROM: must be a JSON list"),
        ({"KUBERL_OPERATOR_METRICS_PORT": "http"}, "KUBERL_OPERATOR_METRICS_PORT: expected a number"),
        ({"KUBERL_OPERATOR_RESYNC_SECONDS": "-1"}, "KUBERL_OPERATOR_RESYNC_SECONDS: must be positive"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_operator_command_refuses_bad_settings_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBERL_OPERATOR_RESYNC_SECONDS", "soon")
    assert cli(["operator", "--standalone"]) == 2
    assert "KUBERL_OPERATOR_RESYNC_SECONDS: expected a number" in capsys.readouterr().err
