"""Installing kuberl on a real API server the way the README says: `helm template | kubectl apply`, then RLJobs.

Every step here is a command a user runs (kubectl, helm) or a plain API call; nothing is emulated.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from support.controlplane import ControlPlane
from support.helm_docs import CHART
from support.tools import tool

RELEASE_NAMESPACE = "kuberl-system"
CRD = "rljobs.kuberl.io"
FINALIZERS_NONE = '{"metadata": {"finalizers": null}}'


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run kubectl; its stdout. A failure raises with kubectl's own stderr."""
    done = subprocess.run(
        [tool("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout if check else done.stdout + done.stderr


def helm_template(watch_namespace: str, *extra: str) -> str:
    """The chart rendered as `helm install` would install it into RELEASE_NAMESPACE, watching one namespace."""
    command = [tool("helm"), "template", "kuberl", str(CHART), "--namespace", RELEASE_NAMESPACE, "--no-hooks"]
    command += ["--set", f"watchNamespaces={{{watch_namespace}}}", *extra]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def install_chart(kubeconfig: Path, watch_namespace: str) -> list[dict[str, Any]]:
    """`kubectl create namespace kuberl-system`, then `helm template ... | kubectl apply -f -` (the README's steps);
    waits until the CRD is Established. Returns the applied documents."""
    if not kubectl(kubeconfig, "get", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", "-o", "name"):
        kubectl(kubeconfig, "create", "namespace", RELEASE_NAMESPACE)
    rendered = helm_template(watch_namespace)
    kubectl(kubeconfig, "apply", "-f", "-", stdin=rendered)
    kubectl(kubeconfig, "wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def create_namespace(kubeconfig: Path, namespace: str, timeout: float = 60) -> None:
    """Create a namespace and wait for its `default` ServiceAccount: pods are refused until the
    controller-manager has made it."""
    kubectl(kubeconfig, "create", "namespace", namespace)
    deadline = time.monotonic() + timeout
    while not kubectl(kubeconfig, "-n", namespace, "get", "serviceaccount", "default", "--ignore-not-found"):
        if time.monotonic() > deadline:
            raise AssertionError(f"no default ServiceAccount in {namespace} after {timeout:.0f}s")
        time.sleep(0.3)


def service_account_kubeconfig(plane: ControlPlane, namespace: str, account: str, target: Path) -> Path:
    """A kubeconfig holding a bound token of that ServiceAccount (`kubectl create token`), the CA embedded: what
    the operator's pod gets, used from outside."""
    token = kubectl(plane.kubeconfig, "-n", namespace, "create", "token", account, "--duration=2h").strip()
    return plane.user_kubeconfig(target, f"system:serviceaccount:{namespace}:{account}", token=token)


def delete_jobs_then_namespace(kubeconfig: Path, namespace: str, timeout: float = 60) -> None:
    """Teardown that leaves nothing stuck Terminating: RLJobs first (the operator fixture has already deleted its
    jobs while it ran); a job whose finalizer no operator is left to release gets it removed, as an admin would;
    then the namespace."""
    kubectl(kubeconfig, "-n", namespace, "delete", "rljobs", "--all", "--wait=false")
    deadline = time.monotonic() + timeout
    while names := kubectl(kubeconfig, "-n", namespace, "get", "rljobs", "-o", "name").split():
        if time.monotonic() > deadline:
            for name in names:
                kubectl(kubeconfig, "-n", namespace, "patch", name, "--type=merge", "-p", FINALIZERS_NONE)
            break
        time.sleep(0.5)
    kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false")


def conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []}


def get_json(kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, "get", *args, "-o", "json"))
