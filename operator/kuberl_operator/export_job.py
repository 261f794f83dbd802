"""`kuberl export JOB OUT`: copy a published policy version out of a cluster job's checkpoint volume.

A pod of the worker image (the export pod) mounts the job's checkpoint claim read-only and serves its published
versions (kuberl_workers/export/server.py); this module creates it, waits until it is Ready, reads the versions
and streams one as a tar through the API server's pod proxy into OUT, then deletes the pod. So the user needs
only a kubeconfig with RBAC for `pods` (create, get, delete) and `pods/proxy` (get) in the job's namespace, not a
network path into the cluster (`kubectl cp` would need a shell and tar in the image, `port-forward` a free port).

Phases: read the job → create the pod → wait for it (bounded, reported) → list → stream and check → clean up.
The pod has the RLJob as owner (deleting the job deletes it), an activeDeadlineSeconds, and exits by itself when
idle, so a CLI killed midway leaves nothing for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberl_operator.api.rljob import RLJob
from kuberl_operator.builders import CHECKPOINT_DIR, DEFAULT_WORKER_IMAGE, Manifest, _security
from kuberl_operator.kube import ApiError, Kube, path
from kuberl_operator.launcher.export import ExportError, check_out
from kuberl_operator.pods import start_problem
from kuberl_workers.config import ENV_EXPORT_TOKEN, ENV_POD_IP, EXPORT_TOKEN_HEADER

EXPORT_PORT = 8470
DEADLINE_SECONDS = 3600  # the pod's activeDeadlineSeconds: the longest an export may take
IDLE_SECONDS = 300  # the server exits after this long without a request
ENV_EXPORT_ROOT = "KUBERL_EXPORT_ROOT"
TOKEN_HEADER = EXPORT_TOKEN_HEADER
REPORT_EVERY = 10.0


def export_pod_name(job: str, suffix: str) -> str:
    return f"{job[:50]}-export-{suffix}"


def build_export_pod(job: RLJob, uid: str, name: str, image: str = DEFAULT_WORKER_IMAGE) -> Manifest:
    """The export pod of `job` (uid: the RLJob's, for the ownerReference): the worker image running
    `python -m kuberl_workers.export` on the checkpoint claim, mounted read-only, with the controller template's
    scheduling fields (nodeSelector, tolerations, affinity, imagePullSecrets, priorityClassName). The token is
    the env var ENV_EXPORT_TOKEN, set by `export_job` (so that this builder stays pure).
    """
    claim = job.spec.checkpoint.volume
    if claim is None:
        raise ExportError("spec.checkpoint.volume is unset: the job's weights lived in its pods' emptyDir")
    template_spec = dict((job.spec.controller.template or {}).get("spec") or {})
    scheduling = ("nodeSelector", "tolerations", "affinity", "imagePullSecrets", "priorityClassName")
    container = {
        "name": "export",
        "image": job.spec.image or image,
        "command": ["python", "-m", "kuberl_workers.export"],
        "args": [
            *("--root", f"$({ENV_EXPORT_ROOT})", "--host", f"$({ENV_POD_IP})"),
            *("--port", str(EXPORT_PORT), "--idle-seconds", str(IDLE_SECONDS)),
        ],
        "env": [
            {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": ENV_EXPORT_ROOT, "value": CHECKPOINT_DIR},  # where the claim is mounted
        ],
        "ports": [{"name": "export", "containerPort": EXPORT_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": EXPORT_PORT}, "periodSeconds": 2},
        "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINT_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace or "default",
            "labels": {
                "app.kubernetes.io/name": "kuberl",
                "app.kubernetes.io/instance": job.metadata.name,
                "app.kubernetes.io/component": "export",
                "app.kubernetes.io/part-of": "kuberl",
                "app.kubernetes.io/managed-by": "kuberl-cli",
            },
            "ownerReferences": [
                {"apiVersion": "kuberl.io/v1alpha1", "kind": "RLJob", "name": job.metadata.name, "uid": uid}
            ],
        },
        "spec": {
            **{k: template_spec[k] for k in scheduling if k in template_spec},
            "containers": [container],
            "restartPolicy": "Never",
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }


async def export_job(
    kube: Kube,
    namespace: str,
    job_name: str,
    out: Path,
    step: int | None = None,
    image: str = DEFAULT_WORKER_IMAGE,
    timeout: float = 300.0,
    report: Callable[[str], None] = print,
) -> Path:
    """Copy version `step` (default: the newest) of the job's checkpoint volume into `out` (absent or empty).

    Raises ExportError naming what is wrong (no such job, no checkpoint volume, no such version, the pod did not
    start within `timeout` seconds and why, a short transfer); ApiError for a refused API call (e.g. 403: the
    RBAC this needs is in the module docstring).
    """
    check_out(out)
    body = await kube.get(path(namespace, "rljobs", job_name))
    if body is None:
        raise ExportError(f"no RLJob {namespace}/{job_name}")
    job = RLJob.model_validate({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    name = export_pod_name(job_name, secrets.token_hex(3))
    pod = build_export_pod(job, body["metadata"]["uid"], name, image)
    token = secrets.token_urlsafe(32)
    pod["spec"]["containers"][0]["env"].append({"name": ENV_EXPORT_TOKEN, "value": token})
    await kube.create(namespace, "pods", pod)
    report(f"export pod {namespace}/{name} created (claim {job.spec.checkpoint.volume}, read-only)")
    try:
        await _wait_ready(kube, namespace, name, timeout, report)
        proxy = f"{path(namespace, 'pods', f'{name}:{EXPORT_PORT}')}/proxy"
        listing = (await kube.call("GET", f"{proxy}/versions", headers={TOKEN_HEADER: token}))["versions"]
        version, files = _choose(listing, step, job_name)
        report(f"copying version {version} ({sum(files.values()) / 1e9:.2f} GB, {len(files)} files) to {out}")
        staging = out.with_name(f".{out.name}.export")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            await _stream_tar(kube, f"{proxy}/versions/{version}.tar", {TOKEN_HEADER: token}, staging)
            _check_files(staging, files, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return out
    finally:
        try:
            await kube.delete(namespace, "pods", name)
        except ApiError as error:  # the pod goes with its deadline or the job anyway
            report(f"warning: could not delete export pod {name}: {error}")


async def _wait_ready(kube: Kube, namespace: str, name: str, timeout: float, report: Callable[[str], None]) -> None:
    """Until the pod is Ready; ExportError when it ends, or after `timeout` s with its last known problem."""
    deadline = last = time.monotonic()
    deadline += timeout
    problem = "not scheduled yet"
    while time.monotonic() < deadline:
        pod = await kube.get(path(namespace, "pods", name)) or {}
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            ended = next(
                ((c.get("state") or {}).get("terminated") or {} for c in status.get("containerStatuses") or []), {}
            )
            message = str(ended.get("message") or status.get("message") or "no message").strip()
            raise ExportError(f"export pod {name} ended (exit {ended.get('exitCode')}) before serving: {message}")
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
            return
        found = start_problem(pod) if pod else None
        problem = found[1] if found else f"phase {status.get('phase') or 'unknown'}, not Ready"
        if time.monotonic() - last >= REPORT_EVERY:
            report(f"waiting for export pod {name}: {problem}")
            last = time.monotonic()
        await asyncio.sleep(1.0)
    raise ExportError(f"export pod {name} not Ready after {timeout:.0f} s (--timeout): {problem}")


def _choose(listing: dict[str, Any], step: int | None, job: str) -> tuple[int, dict[str, int]]:
    versions = {int(v): info for v, info in listing.items()}
    if not versions:
        raise ExportError(f"RLJob {job}: no published weights on its checkpoint volume yet")
    chosen = max(versions) if step is None else step
    if chosen not in versions:
        raise ExportError(f"RLJob {job}: no weights for step {chosen}; published steps: {sorted(versions)}")
    if versions[chosen]["missing"]:
        raise ExportError(f"RLJob {job}: version {chosen} lacks {', '.join(versions[chosen]['missing'])}")
    return chosen, {str(k): int(v) for k, v in versions[chosen]["files"].items()}


async def _stream_tar(kube: Kube, url_path: str, headers: dict[str, str], staging: Path) -> None:
    """Extract the tar stream into `staging` as it arrives (no second copy on disk); `data` filter: regular
    files inside `staging` only.
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()

    def extract() -> None:
        with os.fdopen(read_fd, "rb") as pipe, tarfile.open(fileobj=pipe, mode="r|") as tar:
            tar.extractall(staging, filter="data")

    extracting = loop.run_in_executor(None, extract)
    writer = os.fdopen(write_fd, "wb")

    async def sink(chunk: bytes) -> None:
        await loop.run_in_executor(None, writer.write, chunk)

    try:
        await kube.download(url_path, headers, sink)
    except BrokenPipeError:
        pass  # the extraction stopped early: its own error below says why
    finally:
        with contextlib.suppress(BrokenPipeError):
            writer.close()
    try:
        await extracting
    except (tarfile.TarError, OSError) as error:
        raise ExportError(f"the export stream broke off or was not a tar: {error}") from error


def _check_files(staging: Path, files: dict[str, int], version: int) -> None:
    got = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
    if got != files:
        wrong = sorted(n for n in set(got) | set(files) if got.get(n) != files.get(n))
        raise ExportError(f"version {version}: the copy differs from the volume in {wrong} (nothing was kept)")
