"""The operator's environment contract: what the Helm chart (or a user) configures, read once, validated."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kuberl_operator.builders import DEFAULT_WORKER_IMAGE

ENV_WORKER_IMAGE: Final = "KUBERL_WORKER_IMAGE"
ENV_NETWORK_POLICY: Final = "KUBERL_NETWORK_POLICY"
ENV_NETWORK_POLICY_METRICS_FROM: Final = "KUBERL_NETWORK_POLICY_METRICS_FROM"
ENV_OPERATOR_NAMESPACE: Final = "KUBERL_OPERATOR_NAMESPACE"
ENV_METRICS_PORT: Final = "KUBERL_OPERATOR_METRICS_PORT"
ENV_RESYNC_SECONDS: Final = "KUBERL_OPERATOR_RESYNC_SECONDS"


class SettingsError(ValueError):
    """An operator environment variable holds a value the operator cannot use."""


@dataclass(frozen=True)
class Settings:
    worker_image: str = DEFAULT_WORKER_IMAGE
    # give each job a NetworkPolicy; operator_namespace is where the operator's pods run (they call /v1/demand)
    network_policy: bool = False
    operator_namespace: str = "default"
    metrics_from: list[dict[str, Any]] = field(default_factory=list)
    metrics_port: int = 8080
    resync_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        try:
            metrics_from = json.loads(env.get(ENV_NETWORK_POLICY_METRICS_FROM) or "[]")
        except json.JSONDecodeError as error:
            raise SettingsError(f"{ENV_NETWORK_POLICY_METRICS_FROM}: not JSON ({error})") from None
        if not isinstance(metrics_from, list) or not all(isinstance(p, dict) for p in metrics_from):
            raise SettingsError(f"{ENV_NETWORK_POLICY_METRICS_FROM}: must be a JSON list of NetworkPolicyPeer objects")
        flag = (env.get(ENV_NETWORK_POLICY) or "false").lower()
        if flag not in ("true", "false", "1", "0"):
            raise SettingsError(f"{ENV_NETWORK_POLICY}: expected true or false, got {flag!r}")
        return cls(
            worker_image=env.get(ENV_WORKER_IMAGE) or DEFAULT_WORKER_IMAGE,
            network_policy=flag in ("true", "1"),
            operator_namespace=env.get(ENV_OPERATOR_NAMESPACE) or "default",
            metrics_from=metrics_from,
            metrics_port=_number(env, ENV_METRICS_PORT, "8080", int),
            resync_seconds=_number(env, ENV_RESYNC_SECONDS, "10", float),
        )


def _number(env: Mapping[str, str], name: str, default: str, kind: type[int] | type[float]) -> Any:
    raw = env.get(name) or default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be positive, got {raw!r}")
    return value
