"""Pure builders: an RLJob (and what the operator observed) -> the manifests of its children. No API calls."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Final

from kuberl_operator.api.rljob import RLJob
from kuberl_workers.config import (
    ENV_CONFIG,
    ENV_CONTROLLER_URL,
    ENV_INDEX,
    ENV_POD_IP,
    ENV_ROLE,
    ENV_TOKEN_FILE,
    ENV_TRAINER_MASTER,
    ENV_WORKER_ID,
    WorkerConfig,
    reward_auth_env,
)

Manifest = dict[str, Any]

LABEL_JOB: Final = "kuberl.io/job"
LABEL_ROLE: Final = "kuberl.io/role"
LABEL_INDEX: Final = "kuberl.io/index"
ANNOTATION_SPEC_HASH: Final = "kuberl.io/template-hash"

CONFIG_DIR: Final = "/etc/kuberl/config"
TOKEN_DIR: Final = "/etc/kuberl/token"
CHECKPOINT_DIR: Final = "/var/kuberl/checkpoints"
MODEL_ROOT: Final = "/var/kuberl/model"
DATA_ROOT: Final = "/var/kuberl/data"
REWARDS_ROOT: Final = "/var/kuberl/rewards"  # a python reward's ConfigMap or volume: <root>/<reward name>
EVAL_DATA_ROOT: Final = "/var/kuberl/eval-data"
DEFAULT_WORKER_IMAGE: Final = "ghcr.io/kuberl/worker:0.1.0"
# labels the Helm chart gives the operator's pods (the per-job NetworkPolicy lets them reach the controller)
OPERATOR_POD_LABELS: Final = {"app.kubernetes.io/part-of": "kuberl", "app.kubernetes.io/component": "operator"}
ROLE_PORT: Final = {"controller": "controller", "trainer": "trainer", "rollout": "rollout"}


def labels(job: str, role: str | None = None, index: int | None = None) -> dict[str, str]:
    """The one label set of every child: app.kubernetes.io/* plus kuberl.io/{job,role,index}."""
    out = {
        "app.kubernetes.io/name": "kuberl",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/managed-by": "kuberl-operator",
        "app.kubernetes.io/part-of": "kuberl",
        LABEL_JOB: job,
    }
    if role is not None:
        out["app.kubernetes.io/component"] = role
        out[LABEL_ROLE] = role
    if index is not None:
        out[LABEL_INDEX] = str(index)
    return out


def selector(job: str, role: str | None = None) -> str:
    """A label selector string for the job's pods (of one role)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels(job, role).items()) if k in (LABEL_JOB, LABEL_ROLE))


def pod_name(job: str, role: str, index: int) -> str:
    return f"{job}-{role}-{index}"


def config_map_name(job: str) -> str:
    return f"{job}-config"


def secret_name(job: str) -> str:
    return f"{job}-token"


def controller_service(job: str) -> str:
    return f"{job}-controller"


def trainer_service(job: str) -> str:
    return f"{job}-trainer"


def template_hash(job: RLJob, role: str) -> str:
    """What a role's pods are built from that the user may change: its pod template and the image."""
    source = {"template": getattr(job.spec, role).template, "image": job.spec.image}
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _meta(job: RLJob, name: str, role: str | None = None, index: int | None = None) -> dict[str, Any]:
    user = dict(job.metadata.labels or {})
    return {
        "name": name,
        "namespace": job.metadata.namespace or "default",
        "labels": {**user, **labels(job.metadata.name, role, index)},
    }


def render_config(job: RLJob) -> WorkerConfig:
    """The worker config as pods see it: volumes mounted at fixed paths."""
    from kuberl_operator.render import worker_config
    from kuberl_operator.reward_server import reward_server_urls

    return worker_config(
        job,
        CHECKPOINT_DIR,
        model_root=MODEL_ROOT,
        data_root=DATA_ROOT,
        eval_root=DATA_ROOT if _eval_volume(job) is None else EVAL_DATA_ROOT,
        rewards_root=REWARDS_ROOT,
        shared_checkpoints=job.spec.checkpoint.volume is not None,
        reward_servers=reward_server_urls(job),
    )


def build_config_map(job: RLJob, cfg: WorkerConfig) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, config_map_name(job.metadata.name)),
        "data": {"config.json": cfg.model_dump_json(indent=2)},
    }


def build_secret(job: RLJob, token: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(job, secret_name(job.metadata.name)),
        "stringData": {"token": token},
    }


def build_services(job: RLJob, cfg: WorkerConfig) -> list[Manifest]:
    """Headless services: a stable name for the controller, and per-pod DNS for the trainer rendezvous."""
    name = job.metadata.name
    controller = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, controller_service(name), "controller"),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: name, LABEL_ROLE: "controller"},
            "ports": [{"name": "api", "port": cfg.ports.controller, "targetPort": "controller"}],
        },
    }
    trainer = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, trainer_service(name), "trainer"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rendezvous happens before readiness
            "selector": {LABEL_JOB: name, LABEL_ROLE: "trainer"},
            "ports": [
                {"name": "rendezvous", "port": cfg.ports.rendezvous},
                {"name": "metrics", "port": cfg.ports.trainer},
            ],
        },
    }
    return [controller, trainer]


def build_network_policy(
    job: RLJob, cfg: WorkerConfig, operator_namespace: str, metrics_from: list[dict[str, Any]] | None = None
) -> Manifest:
    """Ingress to the job's pods: from the job's own pods (any port: API, rendezvous, collectives), from the
    operator to the controller port (demand, drain), and from `metrics_from` peers to the role ports (scrapes).
    """
    name = job.metadata.name
    role_ports = [
        {"protocol": "TCP", "port": port} for port in (cfg.ports.controller, cfg.ports.rollout, cfg.ports.trainer)
    ]
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
        "podSelector": {"matchLabels": OPERATOR_POD_LABELS},
    }
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": {LABEL_JOB: name}}}]},
        {"from": [operator], "ports": [{"protocol": "TCP", "port": cfg.ports.controller}]},
    ]
    if metrics_from:
        ingress.append({"from": copy.deepcopy(metrics_from), "ports": role_ports})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(job, network_policy_name(name)),
        "spec": {"podSelector": {"matchLabels": {LABEL_JOB: name}}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def network_policy_name(job: str) -> str:
    return f"{job}-pods"


def _eval_volume(job: RLJob) -> str | None:
    """The eval dataset's claim when it is not the training data's (that one is mounted already)."""
    claim = job.spec.eval.dataset.volume if job.spec.eval else None
    return None if claim == job.spec.task.dataset.volume else claim


def _volumes(job: RLJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    name = job.metadata.name
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(name)}},
        {"name": "token", "secret": {"secretName": secret_name(name), "defaultMode": 0o400}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint.volume}}
        if spec.checkpoint.volume
        else {"name": "checkpoints", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
    ]
    for volume, claim, root in (
        ("model", spec.model.volume, MODEL_ROOT),
        ("data", spec.task.dataset.volume, DATA_ROOT),
        ("eval-data", _eval_volume(job), EVAL_DATA_ROOT),
    ):
        if claim:
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mounts.append({"name": volume, "mountPath": root, "readOnly": True})
    return volumes, mounts


def _reward_sources(job: RLJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The controller's python reward code (ConfigMaps, claims) as (volumes, mounts) and the http rewards' auth
    Secrets as env.
    """
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    for reward in job.spec.task.rewards or ():
        volume = f"reward-{reward.name.replace('_', '-')}"
        python, http = reward.python, reward.http
        if python is not None and python.configMap:
            volumes.append({"name": volume, "configMap": {"name": python.configMap}})
        elif python is not None and python.volume:
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": python.volume, "readOnly": True}})
        if python is not None and (python.configMap or python.volume):
            mounts.append({"name": volume, "mountPath": f"{REWARDS_ROOT}/{reward.name}", "readOnly": True})
        if http is not None and http.authSecret is not None:
            ref = {"name": http.authSecret.name, "key": http.authSecret.key}
            env.append({"name": reward_auth_env(reward.name), "valueFrom": {"secretKeyRef": ref}})
    return volumes, mounts, env


def _security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def build_pod(
    job: RLJob,
    cfg: WorkerConfig,
    role: str,
    index: int,
    image: str = DEFAULT_WORKER_IMAGE,
    avoid_nodes: list[str] | None = None,
) -> Manifest:
    """One worker pod. The user's role template is the base; kuberl owns the container's command, env, ports,
    probes and mounts. restartPolicy Never: the operator, not the kubelet, decides about restarts.
    """
    spec = job.spec
    name = job.metadata.name
    template = copy.deepcopy(getattr(spec, role).template or {})
    pod_spec: dict[str, Any] = dict(template.get("spec") or {})
    containers = [dict(c) for c in pod_spec.get("containers") or []]
    main = next((c for c in containers if c.get("name") == role), None)
    if main is None:
        main = containers[0] if containers else {}
        if not containers:
            containers.append(main)
    port = getattr(cfg.ports, role)
    namespace = job.metadata.namespace or "default"
    env: list[dict[str, Any]] = [
        {"name": ENV_CONFIG, "value": f"{CONFIG_DIR}/config.json"},
        {"name": ENV_TOKEN_FILE, "value": f"{TOKEN_DIR}/token"},
        {"name": ENV_ROLE, "value": role},
        {"name": ENV_INDEX, "value": str(index)},
        {
            "name": ENV_CONTROLLER_URL,
            "value": f"http://{controller_service(name)}.{namespace}.svc:{cfg.ports.controller}",
        },
        {
            "name": ENV_TRAINER_MASTER,
            "value": f"{pod_name(name, 'trainer', 0)}.{trainer_service(name)}.{namespace}.svc",
        },
        {"name": ENV_WORKER_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "KUBERL_CACHE", "value": "/tmp/kuberl-cache"},
        {"name": "HOME", "value": "/tmp"},
    ]
    volumes, mounts = _volumes(job)
    if role == "controller":  # rewards run in the controller
        reward_volumes, reward_mounts, reward_env = _reward_sources(job)
        volumes, mounts, env = volumes + reward_volumes, mounts + reward_mounts, env + reward_env
    probe: dict[str, Any] = {
        "httpGet": {"path": "/healthz", "port": ROLE_PORT[role]},
        "periodSeconds": 10,
        "failureThreshold": 6,
    }
    user_env = [e for e in main.get("env") or [] if e.get("name") not in {v["name"] for v in env}]
    main.update(
        {
            "name": role,
            "image": main.get("image") or spec.image or image,
            "command": ["python", "-m", f"kuberl_workers.{role}"],
            "env": env + user_env,
            "ports": [{"name": ROLE_PORT[role], "containerPort": port}],
            "volumeMounts": mounts + list(main.get("volumeMounts") or []),
            "readinessProbe": probe,
            # vLLM loads for minutes: liveness waits for the engine through a startup probe first
            "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 90},
            "livenessProbe": probe,
            # a worker that stops on invalid input writes why (kuberl_workers.preflight); else the log's tail
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {**_security(), **(main.get("securityContext") or {})},
        }
    )
    pod_spec.update(
        {
            "containers": containers,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "volumes": volumes + list(pod_spec.get("volumes") or []),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "fsGroup": 1000,
                **(pod_spec.get("securityContext") or {}),
            },
        }
    )
    if role == "trainer":
        pod_spec.update({"hostname": pod_name(name, role, index), "subdomain": trainer_service(name)})
    if avoid_nodes:
        pod_spec["affinity"] = _avoid(pod_spec.get("affinity"), avoid_nodes)
    metadata = _meta(job, pod_name(name, role, index), role, index)
    user_meta = template.get("metadata") or {}
    metadata["labels"] = {**(user_meta.get("labels") or {}), **metadata["labels"]}
    metadata["annotations"] = {**(user_meta.get("annotations") or {}), ANNOTATION_SPEC_HASH: template_hash(job, role)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _avoid(affinity: dict[str, Any] | None, nodes: list[str]) -> dict[str, Any]:
    """Add a required node-affinity term keeping pods off `nodes` (kept alongside the user's affinity)."""
    affinity = copy.deepcopy(affinity or {})
    requirement = {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": sorted(nodes)}
    required = affinity.setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": [{"matchExpressions": []}]}
    )
    for term in required.setdefault("nodeSelectorTerms", [{"matchExpressions": []}]):
        expressions = term.setdefault("matchExpressions", [])
        expressions[:] = [
            e for e in expressions if e.get("key") != "kubernetes.io/hostname" or e.get("operator") != "NotIn"
        ] + [requirement]
    return affinity
