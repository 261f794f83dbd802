"""kuberl on a genuine kube-apiserver (+ controller-manager): install, validation, subresources, the operator.

Installed as the README says (`helm template | kubectl apply`); the operator connects with a kubeconfig that embeds
its certificates (as kind, kubeadm and cloud providers write them). No test kubelet here: pods stay unscheduled,
which is all the API-level checks need (the e2e module trains on the same control plane with the test kubelet).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.api.validate import validate_document
from kuberl_operator.kube import ApiError
from support.celcases import INVALID, boundary_specs, valid_specs
from support.controlplane import ControlPlane
from support.kubeapi import Api, Cluster, Operator, delete_all_jobs, start_operator, stop_operator
from support.realcluster import (
    CRD,
    conditions,
    create_namespace,
    delete_jobs_then_namespace,
    get_json,
    install_chart,
    kubectl,
)
from support.specs import minimal_job, set_path

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@dataclass
class Setup:
    plane: ControlPlane
    namespace: str
    api: Api
    applied: list[dict[str, Any]]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return kubectl(self.plane.kubeconfig, "-n", self.namespace, *args, stdin=stdin, check=check)


@pytest.fixture(scope="module")
def setup(control_plane: ControlPlane) -> Iterator[Setup]:
    namespace = f"kuberl-real-{uuid.uuid4().hex[:6]}"
    create_namespace(control_plane.kubeconfig, namespace)
    applied = install_chart(control_plane.kubeconfig, namespace)
    try:
        yield Setup(control_plane, namespace, Api(control_plane.kubeconfig, namespace), applied)
    finally:
        delete_jobs_then_namespace(control_plane.kubeconfig, namespace)


@pytest.fixture(scope="module")
def operator(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator with the admin kubeconfig: client certificate, key and CA all embedded as `*-data`."""
    admin = yaml.safe_load(setup.plane.kubeconfig.read_text())["users"][0]["user"]
    assert {"client-certificate-data", "client-key-data"} <= set(admin)
    process = start_operator(Cluster(setup.plane.kubeconfig, setup.api, None), tmp_path_factory.mktemp("operator"))
    try:
        yield process
    finally:
        try:
            delete_all_jobs(setup.api, timeout=60)
        finally:
            stop_operator(process)


def wait_for(probe: Callable[[], T | None], what: str, timeout: float, explain: Callable[[], str] = str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{explain()}")


def job(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    doc = minimal_job(**spec)
    doc["metadata"] = {"name": name, "namespace": namespace}
    return doc


# --- install ---------------------------------------------------------------------------------------------------


def test_generated_and_chart_crds_are_accepted_established_and_structural(setup: Setup) -> None:
    for file in ("crds/rljobs.kuberl.io.yaml", "charts/kuberl/files/rljobs.kuberl.io.yaml"):
        kubectl(setup.plane.kubeconfig, "apply", "-f", str(ROOT / file))
    crd = get_json(setup.plane.kubeconfig, "crd", CRD)
    status = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert status.get("Established") == "True" and status.get("NamesAccepted") == "True", status
    assert "NonStructuralSchema" not in status, crd["status"]["conditions"]


def test_the_readmes_cluster_steps_run_as_written(setup: Setup) -> None:
    """The README's "On a cluster" block, run by bash with the venv's kubectl and helm (its namespaces renamed so
    that they are new here); docs/install.md shows the same render-and-apply steps."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## On a cluster", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    install = (ROOT / "docs" / "install.md").read_text()
    assert "helm template kuberl charts/kuberl --namespace kuberl-system --no-hooks | kubectl apply -f -" in block
    assert "helm template kuberl charts/kuberl --namespace kuberl-system --no-hooks | kubectl apply -f -" in install
    script = (
        block.replace("kuberl-system", "readme-system")
        .replace(" rl\n", " readme-rl\n")
        .replace("-n rl ", "-n readme-rl ")
    )
    env = {**os.environ, "KUBECONFIG": str(setup.plane.kubeconfig)}
    env["PATH"] = f"{Path(_kuberl()).parent}:{env['PATH']}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{script}\n{done.stdout}{done.stderr}"
    assert done.stdout.splitlines()[-2].split() == ["NAME", "STEP", "ROLLOUTS", "TRAINERS", "BUDGET", "STATUS", "AGE"]
    assert done.stdout.splitlines()[-1].startswith("quickstart ")
    kubectl(setup.plane.kubeconfig, "delete", "namespace", "readme-rl", "readme-system", "--wait=false")


def test_every_chart_object_exists_after_helm_template_and_kubectl_apply(setup: Setup) -> None:
    assert {d["kind"] for d in setup.applied} >= {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"}
    for doc in setup.applied:
        meta = doc["metadata"]
        where = ["-n", meta["namespace"]] if meta.get("namespace") else []
        assert kubectl(setup.plane.kubeconfig, *where, "get", doc["kind"], meta["name"], "-o", "name")


def test_every_example_is_accepted_by_the_api_server_and_by_kuberl_validate(setup: Setup) -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for prerequisites in sorted((ROOT / "examples" / "prerequisites").glob("*.yaml")):
        kubectl(setup.plane.kubeconfig, "apply", "-f", str(prerequisites))  # what their headers tell an admin
    for example in examples:
        namespace = yaml.safe_load(example.read_text())["metadata"].get("namespace", setup.namespace)
        out = kubectl(setup.plane.kubeconfig, "-n", namespace, "apply", "--dry-run=server", "-f", str(example))
        assert "created (server dry run)" in out, (example, out)
        assert subprocess.run([_kuberl(), "validate", str(example)], capture_output=True).returncode == 0


def _kuberl() -> str:
    import sys

    return str(Path(sys.executable).parent / "kuberl")


# --- validation: kuberl validate and the API server give one verdict ---------------------------------------------


def _server_problems(setup: Setup, doc: dict[str, Any]) -> set[str]:
    """The fields the API server refuses in `doc` (server-side dry run, strict field validation)."""
    return _admit(setup, doc)[0]


def _admit(setup: Setup, doc: dict[str, Any]) -> tuple[set[str], dict[str, Any], str]:
    """(refused fields, the object as the API server would store it, its messages) of a server-side dry run."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = setup.namespace
    params = {"dryRun": "All", "fieldValidation": "Strict"}
    url = f"/apis/kuberl.io/v1alpha1/namespaces/{setup.namespace}/rljobs"
    try:
        stored = setup.api.run(lambda kube: kube.call("POST", url, doc, params))
    except ApiError as error:
        assert error.status in (400, 422), error
        return _fields_of(error), {}, error.message
    return set(), stored, ""


def _fields_of(error: ApiError) -> set[str]:
    body = json.loads(error.body)
    causes = (body.get("details") or {}).get("causes") or []
    # "some validation rules were not checked because the object was invalid" is a note, not a problem
    fields = {c.get("field", "") for c in causes if "rules were not checked" not in c.get("message", "")}
    if error.status == 400 and "unknown field" in error.message:  # strict decoding: `unknown field "spec.x"`
        fields = {part.split('"')[1] for part in error.message.split("unknown field ")[1:]}
    # a rule at the root (metadata.name) has no field path: the API server reports it at the root ("<nil>")
    return {"metadata.name" if f in ("", "<nil>") else f for f in fields}


@pytest.mark.parametrize(("case", "mutations", "paths"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_refused_by_the_real_api_server_at_the_same_fields(
    setup: Setup, case: str, mutations: dict[str, Any], paths: set[str]
) -> None:
    doc = minimal_job()
    for where, value in mutations.items():
        doc = set_path(doc, where, value)
    assert {p.path for p in validate_document(doc)} == paths
    assert _server_problems(setup, doc) == paths


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=valid_specs())
def test_generated_valid_specs_accepted_and_defaulted_alike(setup: Setup, doc: dict[str, Any]) -> None:
    assert validate_document(doc) == []
    refused, stored, message = _admit(setup, doc)
    assert refused == set(), message
    assert stored["spec"] == RLJob.model_validate(doc).dump()["spec"]  # the CRD's defaults are the models'


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=boundary_specs())
def test_generated_boundary_specs_same_verdict_and_messages(setup: Setup, doc: dict[str, Any]) -> None:
    ours = validate_document(doc)
    refused, _, message = _admit(setup, doc)
    assert {p.path for p in ours} == refused, message
    assert all(p.message in message for p in ours), message


def test_trainer_replicas_are_immutable_on_the_real_api_server(setup: Setup) -> None:
    doc = job("gang", setup.namespace, trainer={"replicas": 2}, suspend=True)
    setup.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    out = setup.kubectl(
        "patch", "rlj", "gang", "--type=merge", "-p", '{"spec":{"trainer":{"replicas":4}}}', check=False
    )
    assert "spec.trainer.replicas" in out and "is immutable" in out
    setup.kubectl("delete", "rlj", "gang")


def test_what_the_api_server_stores_kuberl_validate_accepts(setup: Setup) -> None:
    """Explicit nulls (dropped), integral floats for integers (kubectl sends 32.0 as 32), generateName (a name
    made), each through kubectl as a user applies them."""
    plain = job("lenient", setup.namespace)
    lenient = {
        "null section": set_path(plain, "spec.checkpoint", None),
        "integral float": set_path(plain, "spec.task.promptsPerStep", 32.0),
        "integral float under a rule": set_path(plain, "spec.rollout", {"minReplicas": 1.0, "maxReplicas": 2}),
        "null field": set_path(plain, "spec.suspend", None),
        "generateName": set_path(plain, "metadata", {"generateName": "quick-", "namespace": setup.namespace}),
    }
    for what, doc in lenient.items():
        assert validate_document(doc) == [], what
        out = setup.kubectl("create", "--dry-run=server", "-f", "-", "-o", "name", stdin=yaml.safe_dump(doc))
        assert out.startswith("rljob.kuberl.io/"), (what, out)
    doc = set_path(lenient["generateName"], "spec.task.promptsPerStep", 32.0)
    created = json.loads(setup.kubectl("create", "-f", "-", "-o", "json", stdin=yaml.safe_dump(doc)))
    name, prompts = created["metadata"]["name"], created["spec"]["task"]["promptsPerStep"]
    assert name.startswith("quick-") and len(name) == len("quick-") + 5
    assert prompts == 32 and isinstance(prompts, int)
    setup.kubectl("delete", "rljob", name)


# --- the resource on the real API: columns, explain, scale, status ------------------------------------------------


def test_printer_columns_explain_scale_and_status_subresources(setup: Setup) -> None:
    doc = job("columns", setup.namespace, rollout={"minReplicas": 1, "maxReplicas": 4}, suspend=True)
    setup.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    header = setup.kubectl("get", "rlj").splitlines()[0].split()
    assert header == ["NAME", "STEP", "ROLLOUTS", "TRAINERS", "BUDGET", "STATUS", "AGE"]
    wide = setup.kubectl("get", "rljobs", "-o", "wide").splitlines()[0].split()
    assert wide[-3:] == ["POLICY", "TOKENS/S", "CHECKPOINT"]
    explained = kubectl(setup.plane.kubeconfig, "explain", "rljob.spec.rollout")
    assert "minReplicas" in explained and "Fewest rollout pods" in explained
    setup.kubectl("scale", "rlj", "columns", "--replicas=3")
    assert get_json(setup.plane.kubeconfig, "-n", setup.namespace, "rlj", "columns")["spec"]["rollout"]["replicas"] == 3
    scale = get_json(setup.plane.kubeconfig, "-n", setup.namespace, "rlj", "columns", "--subresource=scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    refused = setup.kubectl("scale", "rlj", "columns", "--replicas=9", check=False)
    assert "must be within [minReplicas, maxReplicas]" in refused
    # status is the status subresource's: a patch of the main resource leaves it alone
    setup.kubectl("patch", "rlj", "columns", "--type=merge", "-p", '{"status": {"step": 7}}')
    assert "step" not in (get_json(setup.plane.kubeconfig, "-n", setup.namespace, "rlj", "columns").get("status") or {})
    setup.kubectl("patch", "rlj", "columns", "--subresource=status", "--type=merge", "-p", '{"status": {"step": 7}}')
    assert get_json(setup.plane.kubeconfig, "-n", setup.namespace, "rlj", "columns")["status"]["step"] == 7
    setup.kubectl("delete", "rlj", "columns")


# --- the operator on the real API server -------------------------------------------------------------------------


def rljob(setup: Setup, name: str) -> dict[str, Any]:
    return setup.api.get("rljobs", name) or {}


def _children(setup: Setup, name: str) -> dict[str, dict[str, Any]]:
    out = {}
    for plural in ("pods", "configmaps", "secrets", "services"):
        for item in setup.api.list(plural, f"kuberl.io/job={name}"):
            out[f"{plural}/{item['metadata']['name']}"] = item
    return out


def test_operator_reconciles_reports_conditions_rests_and_its_children_are_collected(
    setup: Setup, operator: Operator
) -> None:
    name = "real"
    setup.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(job(name, setup.namespace)))

    def explain() -> str:
        return f"{setup.api.get('rljobs', name)}\n--- operator\n{operator.log.read_text()[-3000:]}"

    def pending() -> bool:
        ready = conditions(rljob(setup, name)).get("Ready", {})
        return ready.get("reason") == "Pending" and ready.get("status") == "False"

    wait_for(pending, "Ready=False/Pending", 60, explain)

    def all_children() -> dict[str, dict[str, Any]] | None:
        found = _children(setup, name)
        return found if len(found) >= 7 else None  # 3 pods, the ConfigMap, the Secret, 2 Services

    children = wait_for(all_children, "children", 30, explain)
    assert {f"pods/{name}-{role}-0" for role in ("controller", "trainer", "rollout")} <= set(children)
    for child in children.values():
        owner = child["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "RLJob" and owner["name"] == name and owner["controller"] is True
    status = rljob(setup, name)["status"]
    assert status["observedGeneration"] == 1 and status["rollouts"] == "0/1"

    # at rest: several resyncs (2 s here) change nothing, neither the job nor a child nor the events
    def versions() -> dict[str, str]:
        found = {key: child["metadata"]["resourceVersion"] for key, child in _children(setup, name).items()}
        found["rljob"] = rljob(setup, name)["metadata"]["resourceVersion"]
        found["events"] = str(len(setup.api.list("events")))
        return found

    before = versions()
    time.sleep(8)
    assert versions() == before, "the operator wrote while nothing changed"
    assert "CERTIFICATE_VERIFY_FAILED" not in operator.log.read_text()

    # deletion: the finalizer is released and the garbage collector takes every child
    setup.kubectl("delete", "rljob", name, "--timeout=60s")
    wait_for(lambda: not _children(setup, name), "children garbage-collected", 60, explain)


def test_a_pod_the_api_server_refuses_is_a_condition_and_a_warning_event(setup: Setup, operator: Operator) -> None:
    """requests above limits (pod validation, 422) and an unknown PriorityClass (admission, 403): every other
    child is still created, the job says which pod and quotes the API server, once per change."""
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "over-limit": (
            {"trainer": {"template": {"spec": {"containers": [_limits(requests="2", limits="1")]}}}},
            "Pod over-limit-trainer-0",
            "must be less than or equal to cpu limit",
        ),
        "no-priority": (
            {"rollout": {"template": {"spec": {"priorityClassName": "no-such-priority"}}}},
            "Pod no-priority-rollout-0",
            "no PriorityClass with name no-such-priority was found",
        ),
    }
    for name, (spec, _, _) in cases.items():
        setup.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(job(name, setup.namespace, **spec)))
    for name, (_, child, quoted) in cases.items():

        def refused(name: str = name) -> dict[str, Any] | None:
            degraded = conditions(rljob(setup, name)).get("Degraded", {})
            return degraded if degraded.get("reason") == "CreateRefused" else None

        degraded = wait_for(refused, f"{name}: Degraded/CreateRefused", 60, lambda: operator.log.read_text()[-3000:])
        assert degraded["status"] == "True" and child in degraded["message"] and quoted in degraded["message"]
        ready = conditions(rljob(setup, name))["Ready"]
        assert ready["reason"] == "CreateRefused" and quoted in ready["message"]
        pods = {p["metadata"]["name"] for p in setup.api.list("pods", f"kuberl.io/job={name}")}
        assert f"{name}-controller-0" in pods and child.split()[1] not in pods
        time.sleep(4)  # two more resyncs: retried, but announced once
        warnings = [
            e
            for e in setup.api.list("events")
            if e["involvedObject"]["name"] == name and e["reason"] == "CreateRefused"
        ]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning" and quoted in warnings[0]["message"]
        setup.kubectl("delete", "rljob", name, "--timeout=60s")


def _limits(requests: str, limits: str) -> dict[str, Any]:
    return {"name": "trainer", "resources": {"requests": {"cpu": requests}, "limits": {"cpu": limits}}}


def test_an_invalid_pod_template_fails_the_job_naming_the_field_and_no_pod_is_made(
    setup: Setup, operator: Operator
) -> None:
    """The CRD keeps templates free-form, so the API server stores this; kuberl validate and the operator refuse it
    (the builder used to crash on it every resync)."""
    doc = job("oops", setup.namespace, rollout={"template": {"spec": {"containers": "oops"}}})
    assert [str(p) for p in validate_document(doc)] == [
        "spec.rollout.template.spec.containers: must be an array (got 'oops')"
    ]
    setup.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))

    def failed() -> dict[str, Any] | None:
        condition = conditions(rljob(setup, "oops")).get("Failed", {})
        return condition if condition.get("status") == "True" else None

    condition = wait_for(failed, "Failed/InvalidSpec", 60, lambda: operator.log.read_text()[-3000:])
    assert condition["reason"] == "InvalidSpec" and "spec.rollout.template.spec.containers" in condition["message"]
    assert setup.api.list("pods", "kuberl.io/job=oops") == []
    assert "Traceback" not in operator.log.read_text()


# --- uninstall -------------------------------------------------------------------------------------------------


def test_uninstall_hook_releases_the_finalizer_so_deleting_a_job_completes(
    setup: Setup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """#15 kind 2, on the real API server and controller-manager: an operator holds `kuberl.io/finalizer` on a job
    and goes away (as `helm uninstall` removes it); before the hook, deleting the job hangs in Terminating with its
    pods running. The hook's command (`kuberl release-finalizers`, as the chart's pre-delete Job runs it) scales the
    operator's Deployment to 0, waits for its pods (the ReplicaSet controller removes them), releases the finalizer;
    the job then goes at once and the garbage collector takes its pods."""
    namespace = f"kuberl-uninstall-{uuid.uuid4().hex[:6]}"
    create_namespace(setup.plane.kubeconfig, namespace)
    api = Api(setup.plane.kubeconfig, namespace)
    own = start_operator(Cluster(setup.plane.kubeconfig, api, None), tmp_path_factory.mktemp("uninstall-operator"))
    try:
        kubectl(
            setup.plane.kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(job("held", namespace))
        )
        held = wait_for(
            lambda: (
                (doc := api.get("rljobs", "held"))
                and "kuberl.io/finalizer" in doc["metadata"].get("finalizers", [])
                and len([p for p in api.list("pods") if p["metadata"]["name"].startswith("held-")]) >= 3
            ),
            "the operator's finalizer and pods",
            60,
            lambda: own.log.read_text()[-3000:],
        )
        assert held
    finally:
        stop_operator(own)
    kubectl(setup.plane.kubeconfig, "-n", namespace, "delete", "rljob", "held", "--wait=false")
    time.sleep(3)
    stuck = api.get("rljobs", "held")
    assert stuck is not None and stuck["metadata"].get("deletionTimestamp")  # Terminating, held by the finalizer
    hook = subprocess.run(
        [
            _kuberl(),
            "release-finalizers",
            "--operator-namespace=kuberl-system",
            "--deployment=kuberl",
            f"--namespace={namespace}",
            "--timeout=60",
        ],
        env={**os.environ, "KUBECONFIG": str(setup.plane.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hook.returncode == 0, hook.stderr + hook.stdout
    assert f"{namespace}/held" in hook.stdout
    deployment = json.loads(
        kubectl(setup.plane.kubeconfig, "-n", "kuberl-system", "get", "deployment", "kuberl", "-o", "json")
    )
    assert deployment["spec"]["replicas"] == 0
    wait_for(lambda: api.get("rljobs", "held") is None, "the job gone", 30)
    wait_for(
        lambda: not [p for p in api.list("pods") if p["metadata"]["name"].startswith("held-")], "pods collected", 60
    )
    kubectl(setup.plane.kubeconfig, "delete", "namespace", namespace, "--wait=false")
