"""Chaos on the emulated cluster: an API server that SIGKILLs the operator in the middle of a request it serves, the
pod faults a kubelet or a person causes (deleted, Failed, evicted), and a replay of the API server's pod event history
that finds every moment one (role, index) had two pods."""

from __future__ import annotations

import datetime
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
from kmock._internal import rendering

from support.apiserver import EmulatedApiServer, RecordingBus
from support.chaos import alive
from support.kubeapi import OPERATOR_TOKEN, Api
from support.kubelet import TestKubelet

Trap = Callable[[rendering.Request], bool]


class TrappingApiServer(EmulatedApiServer):
    """The emulated API server with a one-shot trap: the first request `trap` accepts is served in full (stored,
    its watch events sent) and the trap's action runs before the response leaves, so that the client dies without
    knowing whether its write happened."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.trap: Trap | None = None

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        response = await super()._handle(request)
        trap = self.trap
        if trap is not None and response.status < 300 and trap(request):
            self.trap = None
        return response


@dataclass
class Sprung:
    """Where the trap caught the operator: the request it was serving when the operator was SIGKILLed."""

    method: str = ""
    path: str = ""
    at: float = 0.0


def kill_operator_on(method: str, plural: str, name: str, pid: int, sprung: Sprung) -> Trap:
    """A trap for the operator's (its token's) `method` on `plural`/`name`: SIGKILL it and wait until it is gone."""

    def trap(request: rendering.Request) -> bool:
        if request.headers.get("Authorization") != f"Bearer {OPERATOR_TOKEN}" or request.subresource:
            return False
        if str(request.method.value).upper() != method or request.resource is None:
            return False
        if (
            request.resource.plural != plural
            or (request.name or (request.data or {}).get("metadata", {}).get("name")) != name
        ):
            return False
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:  # a zombie until the test reaps it: dead enough
            time.sleep(0.01)
        sprung.method, sprung.path, sprung.at = method, str(request.url.path), time.monotonic()
        return True

    return trap


def _terminated(reason: str, exit_code: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now}}


def mark_failed(api: Api, pod: str, reason: str = "OOMKilled", message: str = "") -> None:
    """What a kubelet writes when the pod's container died (status subresource: phase Failed, the container
    terminated). The test kubelet's process keeps running until the pod is deleted, as a wedged node's would."""
    body = api.get("pods", pod) or {}
    containers = [
        {**status, "ready": False, "state": _terminated(reason, 137)}
        for status in (body.get("status") or {}).get("containerStatuses") or []
    ]
    status = {"phase": "Failed", "reason": reason, "message": message, "containerStatuses": containers}
    api.patch("pods", pod, {"status": status}, subresource="status")


def evict(api: Api, kubelet: TestKubelet, pod: str) -> None:
    """Node-pressure eviction as the kubelet does it: the container is killed and the pod left Failed with reason
    Evicted. (The Eviction API, `pods/NAME/eviction`, is not emulated: without a PodDisruptionBudget it is a
    deletion, which `api.delete` already covers.)"""
    mark_failed(api, pod, "Evicted", "The node was low on resource: memory.")
    kubelet.kill(pod)


def pod_history(emulator: EmulatedApiServer) -> list[dict[str, Any]]:
    """Every pod watch event the API server emitted, oldest first."""
    buses = [bus for key, bus in list(emulator._buses.items()) if getattr(key, "plural", None) == "pods"]
    return [event for bus in buses if isinstance(bus, RecordingBus) for event in list(bus.history)]


def overlapping_pods(events: list[dict[str, Any]], job: str) -> list[str]:
    """Replays the events: every moment a (role, index) of `job` had two live pods, or a pod whose name is not the
    one its role and index give."""
    live: dict[tuple[str, str], set[str]] = {}
    problems = []
    for event in events:
        meta = event["object"]["metadata"]
        labels = meta.get("labels") or {}
        if labels.get("kuberl.io/job") != job:
            continue
        key = (labels.get("kuberl.io/role", ""), labels.get("kuberl.io/index", ""))
        if meta["name"] != f"{job}-{key[0]}-{key[1]}":
            problems.append(f"pod {meta['name']} is {key}")
        uids = live.setdefault(key, set())
        if event["type"] == "DELETED":
            uids.discard(meta["uid"])
        else:
            uids.add(meta["uid"])
            if len(uids) > 1:
                problems.append(f"{key} had {len(uids)} pods at resourceVersion {meta['resourceVersion']}")
    return problems


def created_per_pod(events: list[dict[str, Any]], job: str) -> dict[str, int]:
    """How many pods of each name the job had over the whole run (1 + the times it was recreated)."""
    seen: dict[str, set[str]] = {}
    for event in events:
        meta = event["object"]["metadata"]
        if (meta.get("labels") or {}).get("kuberl.io/job") == job:
            seen.setdefault(meta["name"], set()).add(meta["uid"])
    return {name: len(uids) for name, uids in sorted(seen.items())}


def processes_under(root: str) -> list[int]:
    """Live processes whose working directory lies under `root` (the test kubelet runs each pod in its folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(root) and alive(int(entry)):
                found.append(int(entry))
    return found
