"""The generated CRD: in sync with the checked-in file, structural, and accepted by Kubernetes' own schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from kuberl_operator.api.crd import crd, crd_yaml, openapi_schema
from kuberl_operator.api.validate import load_documents
from support.schema_server import admit

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "rljobs.kuberl.io.yaml"


def test_checked_in_crd_matches_generated() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `make crd`"


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    """The rules of a structural schema: every node typed, no JSON Schema constructs the API server refuses,
    and x-kubernetes-preserve-unknown-fields only on typed objects (the pod templates)."""
    preserved = []
    for path, node in _walk(openapi_schema()):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "not", "title", "const", "nullable", "$defs"):
            assert banned not in node, f"{path} uses {banned}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object"
            preserved.append(path)
        if "default" in node:
            assert path.startswith(".spec"), f"defaults belong to spec only: {path}"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), f"{path}: map keys must be required"
    assert preserved == [
        ".spec.trainer.template",
        ".spec.rollout.template",
        ".spec.controller.template",
        ".spec.rewardServer.template",
    ]


def test_crd_manifest_valid_for_kubernetes() -> None:
    """kubernetes-validate checks the manifest against the apiextensions.k8s.io/v1 OpenAPI schema."""
    manifest = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(manifest, "1.31", strict=True)


def test_crd_identity_subresources_and_columns() -> None:
    spec = crd()["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["plural"]) == ("kuberl.io", "Namespaced", "rljobs")
    assert spec["names"]["kind"] == "RLJob" and spec["names"]["shortNames"] == ["rlj"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    status_props = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    rollout_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rollout"]["properties"]
    assert scale["specReplicasPath"] == ".spec.rollout.replicas" and rollout_props["replicas"]["type"] == "integer"
    assert status_props[scale["statusReplicasPath"].split(".")[-1]]["type"] == "integer"
    assert status_props[scale["labelSelectorPath"].split(".")[-1]]["type"] == "string"
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:6] == ["Step", "Rollouts", "Trainers", "Budget", "Status", "Age"]
    assert all(c.get("priority", 0) == 0 for c in list(columns.values())[:6])
    assert all(c.get("priority") == 1 for c in list(columns.values())[6:])
    assert columns["Status"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'


def test_printer_column_paths_exist_in_schema() -> None:
    schema = openapi_schema()
    for column in crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        parts = column["jsonPath"].split("[")[0].strip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            node = node.get("properties", {}).get(part) or node.get("items", {}).get("properties", {}).get(part)
            assert node is not None, column


def test_status_conditions_and_roles_are_map_lists() -> None:
    status = openapi_schema()["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["conditions"]["items"]["properties"]) >= {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    }
    assert status["conditions"]["items"]["properties"]["type"]["enum"] == [
        "Ready",
        "Progressing",
        "Scaling",
        "Degraded",
        "Suspended",
        "Complete",
        "Failed",
    ]
    assert status["roles"]["x-kubernetes-list-map-keys"] == ["name"]
    assert "phase" not in status


def test_examples_valid_for_models_and_schema() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    schema = openapi_schema()
    for path in examples:
        for doc in load_documents(path):
            assert admit(doc, schema) == [], path
