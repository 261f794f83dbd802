"""The Helm chart, checked by the real tools: helm lint/template, kubernetes-validate, and our own invariants.

No cluster here: what is checked is the rendered manifests (schemas of Kubernetes 1.30, strict), not an install.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.helm_docs import CHART, documented_values, render
from support.rbac import Grant, documented_grants, granted
from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S_VERSION = "1.30.0"
# kinds of CRDs that kubernetes-validate has no schema for (the Prometheus Operator's and kopf's)
NO_SCHEMA = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}


def helm(*args: str) -> str:
    result = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def rendered(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "kuberl", str(CHART), "--namespace", "kuberl-system", *args)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.name if v else "defaults")
def test_lint_strict_and_every_rendered_object_is_valid(values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    helm("lint", "--strict", str(CHART), *args)
    docs = rendered(*args)
    unchecked = set()
    for doc in docs:
        if doc["kind"] in NO_SCHEMA:
            unchecked.add(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {error.path}") from None
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", doc["metadata"]["name"]
        assert labels.get("helm.sh/chart") == "kuberl-0.1.0"
    assert unchecked <= NO_SCHEMA


def test_the_checks_catch_an_invalid_object() -> None:
    """kubernetes-validate in strict mode refuses what a real API server would (guards the test above)."""
    deployment = of_kind(rendered(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_crd_identical_to_crds_folder() -> None:
    source = (ROOT / "crds" / "rljobs.kuberl.io.yaml").read_text()
    assert (CHART / "files" / "rljobs.kuberl.io.yaml").read_text() == source, "run `make crd`"
    crd = of_kind(rendered(), "CustomResourceDefinition")[0]
    assert crd["spec"] == yaml.safe_load(source)["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(rendered("--set", "crds.install=false"), "CustomResourceDefinition")


def test_operator_deployment_is_locked_down() -> None:
    docs = rendered()
    pod = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["livenessProbe"]["httpGet"]["port"] == "health" and container["readinessProbe"]
    assert container["resources"]["limits"]["memory"]
    assert container["args"][0] == "--standalone"
    assert of_kind(docs, "Deployment")[0]["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBERL_WORKER_IMAGE"] == "ghcr.io/kuberl/worker:0.1.0" and env["KUBERL_NETWORK_POLICY"] == "false"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    # the per-job NetworkPolicy the operator writes admits the operator's pods by these labels
    from kuberl_operator.builders import OPERATOR_POD_LABELS

    pod_labels = of_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert OPERATOR_POD_LABELS.items() <= pod_labels.items()


def test_the_operator_accepts_the_environment_and_arguments_the_chart_gives_it() -> None:
    from kuberl_operator.cli import parser
    from kuberl_operator.settings import Settings

    container = of_kind(rendered("-f", str(CHART / "ci" / "all-features-values.yaml")), "Deployment")[0]
    container = container["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings.from_env(env)
    assert settings.network_policy and settings.metrics_from[0]["namespaceSelector"]
    args = parser().parse_args(["operator", *container["args"]])
    assert not args.standalone and args.peering == "kuberl"


def test_watch_namespaces_gives_roles_there_and_no_cluster_wide_job_access() -> None:
    docs = rendered("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    roles = [r for r in of_kind(docs, "Role") if not _hook(r)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for cluster_role in of_kind(docs, "ClusterRole"):
        resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
        assert resources <= {"customresourcedefinitions", "namespaces"}, cluster_role["metadata"]["name"]
    container = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(container["args"])
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]


def _hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


@pytest.mark.parametrize("values", [None, "namespaced-values.yaml"])
def test_the_uninstall_hook_stops_the_operator_then_releases_finalizers_with_only_its_own_rights(
    values: str | None,
) -> None:
    """#15 kind 2: `helm uninstall` runs `kuberl release-finalizers` first (docs/install.md, Uninstall)."""
    from kuberl_operator.cli import parser

    docs = rendered(*(["-f", str(CHART / "ci" / values)] if values else []))
    hooks = [d for d in docs if _hook(d)]
    job = next(d for d in hooks if d["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for d in hooks)
    # the rights exist before the Job runs (lower weight) and nothing is left behind when it succeeds
    assert all(int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0 for d in hooks if d is not job)
    assert all("hook-succeeded" in d["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for d in hooks)
    pod = job["spec"]["template"]["spec"]
    deployment = of_kind(docs, "Deployment")[0]
    args = parser().parse_args(pod["containers"][0]["command"][1:])
    assert (args.operator_namespace, args.deployment) == ("kuberl-system", deployment["metadata"]["name"])
    assert args.namespace == (["team-a", "team-b"] if values else None)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()  # never waits for itself
    assert pod["serviceAccountName"] != deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    bound = {s["name"] for d in hooks if d["kind"].endswith("Binding") for s in d["subjects"]}
    assert bound == {pod["serviceAccountName"]}
    rules = {
        (d["kind"], d["metadata"].get("namespace"), r["resources"][0])
        for d in hooks
        if "rules" in d
        for r in d["rules"]
    }
    jobs_scope = (
        {("Role", "team-a", "rljobs"), ("Role", "team-b", "rljobs")} if values else {("ClusterRole", None, "rljobs")}
    )
    assert rules == {("Role", "kuberl-system", "deployments"), ("Role", "kuberl-system", "pods")} | jobs_scope
    assert not [d for d in rendered("--set", "uninstallHook.enabled=false") if _hook(d)]


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.name if v else "defaults")
def test_the_chart_grants_nothing_beyond_the_documented_list(values: Path | None) -> None:
    documented = documented_grants(ROOT / "docs" / "install.md")
    grants = granted(rendered(*(["-f", str(values)] if values else [])))
    assert grants, "no RBAC rendered"
    assert grants <= documented, f"granted but not in docs/install.md: {sorted(grants - documented)}"


def test_optional_parts_stay_off_by_default() -> None:
    kinds = {d["kind"] for d in rendered()}
    assert kinds.isdisjoint({"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "KopfPeering"})
    grants = granted(rendered())
    assert Grant("networking.k8s.io", "networkpolicies", "create") not in grants


def test_every_value_is_documented_and_the_readme_is_current() -> None:
    documented, missing = documented_values(CHART / "values.yaml")
    assert not missing, f"values without a `# --` comment: {missing}"
    keys = {key for key, _ in documented}
    assert {"watchNamespaces", "networkPolicy.enabled", "metrics.serviceMonitor.enabled"} <= keys
    assert (CHART / "README.md").read_text() == render(), "charts/kuberl/README.md is stale: run `make chart-docs`"


def test_values_keys_are_camel_case() -> None:
    documented, _ = documented_values(CHART / "values.yaml")
    for dotted, _ in documented:
        for key in dotted.split("."):
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", key), f"values key {dotted!r} is not camelCase"


def test_values_doc_parser_finds_an_undocumented_value(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("# -- documented\na: 1\nb:\n  # -- nested\n  c: true\n  d: x\n")
    documented, missing = documented_values(values)
    assert documented == [("a", "documented"), ("b.c", "nested")] and missing == ["b.d"]
