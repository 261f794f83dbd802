"""kmock's KubernetesEmulator, extended with what a real kube-apiserver does that kuberl relies on.

Added (each pinned by tests/unit/test_apiserver_emulator.py): uid, resourceVersion, generation and
creationTimestamp on create; 201 on create; 409 on an update carrying a stale resourceVersion; generation bumped
only by spec changes; status-subresource isolation for resources that have one; equality- and existence-based
label selectors on list and watch; background ownerReference garbage collection; RLJob admission through the
CRD schema (defaulting, pruning, OpenAPI, CEL; 422 with the field causes); a list resourceVersion and watches from
it that replay every later event (none lost between list and watch; deletions get a new resourceVersion); JSON
patch (RFC 6902) with `test` operations failing as 422; Secret `stringData` folded into base64 `data`; new pods
`Pending`; the pods/binding subresource; cluster-scoped namespaces (kmock cannot parse /api/v1/namespaces).
Not emulated: graceful pod deletion (pods go at once), watch bookmarks and 410 Gone, server-side apply, field
selectors, admission webhooks, quotas, RBAC.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
from kmock import KubernetesEmulator
from kmock._internal import aiobus, enums, rendering
from kmock._internal.k8s import KubernetesError

from kuberl_operator.api.crd import openapi_schema
from support.schema_server import admit, apply_defaults, prune

STATUS_SUBRESOURCE = {"pods", "rljobs"}
NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([a-z0-9-]+))?")


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality (`k=v`, `k==v`, `k!=v`) and existence (`k`, `!k`) requirements, comma-separated (ANDed)."""
    for requirement in filter(None, (r.strip() for r in selector.split(","))):
        if "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = requirement.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:] in labels:
                return False
        elif requirement not in labels:
            return False
    return True


class Versions:
    """One resourceVersion sequence per emulated API server (etcd's revision)."""

    def __init__(self) -> None:
        self.last = 0
        self.emitted = 0

    def next(self) -> str:
        self.last += 1
        return str(self.last)


class RecordingBus(aiobus.Bus[Any]):
    """kmock's event bus, also keeping every event so that a watch can resume from a resourceVersion."""

    versions: Versions
    history: list[dict[str, Any]]

    async def put(self, *items: Any) -> None:
        stamped = []
        for event in items:
            event = {"type": event["type"], "object": copy.deepcopy(event["object"])}
            meta = event["object"].setdefault("metadata", {})
            current = int(meta.get("resourceVersion") or 0)
            if current <= self.versions.emitted:  # a deletion (or kmock's own write): a new revision, as etcd's
                meta["resourceVersion"] = self.versions.next()
            self.versions.emitted = int(meta["resourceVersion"])
            self.history.append(event)
            stamped.append(event)
        await super().put(*stamped)


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test); a failed `test` or a missing path raises 422 like the API server."""
    doc = copy.deepcopy(target)

    def walk(pointer: str) -> tuple[Any, str]:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    for number, op in enumerate(operations):
        try:
            parent, key = walk(op["path"])
            index: Any = (len(parent) if key == "-" else int(key)) if isinstance(parent, list) else key
            if op["op"] == "test":
                if parent[index] != op["value"]:
                    raise KubernetesError(
                        status=422,
                        reason="Invalid",
                        message=f"the server rejected our request due to an error in "
                        f"our request: testing value {op['path']} failed (operation {number})",
                    )
            elif op["op"] == "remove":
                del parent[index]
            elif op["op"] == "replace":
                if isinstance(parent, dict) and index not in parent:
                    raise KeyError(index)  # replace requires the path to exist
                parent[index] = op["value"]
            elif op["op"] == "add":
                if isinstance(parent, list):
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                raise KubernetesError(status=422, reason="Invalid", message=f"unsupported operation {op['op']!r}")
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise KubernetesError(
                status=422, reason="Invalid", message=f"operation {number} on {op.get('path')!r} failed: {error!r}"
            ) from error
    return doc


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new` (None removes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    out: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            out[key] = merge_diff(old.get(key), value)
    return out


class EmulatedApiServer(KubernetesEmulator):
    _rljob_schema: dict[str, Any] | None = None
    validate_rljobs = True  # False emulates a cluster that skipped the CRD's CEL rules

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = Versions()
        self.namespaces: dict[str, dict[str, Any]] = {}
        for name in ("default", "kube-system"):
            self.add_namespace(name)

        def bus() -> RecordingBus:
            created = RecordingBus()
            created.versions, created.history = self.versions, []
            return created

        self._buses = collections.defaultdict(bus)

    def add_namespace(self, name: str) -> None:
        self.namespaces[name] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": self.versions.next()},
            "status": {"phase": "Active"},
        }

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        found = NAMESPACE_PATH.fullmatch(raw_request.path)
        if found is None:
            return await super().__call__(raw_request)
        return await self._serve_namespaces(raw_request, found.group(1))

    async def _serve_namespaces(self, raw: aiohttp.web.BaseRequest, name: str | None) -> aiohttp.web.StreamResponse:
        """Cluster-scoped namespaces: list, get, watch and create (kopf lists and watches them)."""
        if raw.method == "POST" and name is None:
            body = await raw.json()
            self.add_namespace(body["metadata"]["name"])
            return aiohttp.web.json_response(self.namespaces[body["metadata"]["name"]], status=201)
        if name is not None:
            if name not in self.namespaces:
                return aiohttp.web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
            return aiohttp.web.json_response(self.namespaces[name])
        items = list(self.namespaces.values())
        if raw.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {"kind": "NamespaceList", "metadata": {"resourceVersion": str(self.versions.last)}, "items": items}
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw)
        for item in items:
            await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        await asyncio.sleep(float(raw.query.get("timeoutSeconds", "3600")))
        return response

    def _stored(self, request: rendering.Request) -> dict[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        obj = self._objects[key] if key in self._objects else None  # noqa: SIM401 - ObjectsArray has no .get
        return None if obj is None or obj.deleted else copy.deepcopy(obj.raw)

    def _admit_rljob(self, new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        if EmulatedApiServer._rljob_schema is None:
            EmulatedApiServer._rljob_schema = openapi_schema()
        schema = EmulatedApiServer._rljob_schema
        problems = admit(new, schema, old) if self.validate_rljobs else []
        if problems:
            causes = [{"field": f, "message": m, "reason": "FieldValueInvalid"} for f, m in problems]
            raise KubernetesError(
                status=422,
                reason="Invalid",
                message="; ".join(f"{f}: {m}" for f, m in problems),
                details={"causes": causes},
            )
        return dict(apply_defaults(prune(new, schema), schema))

    async def _bind(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """POST pods/NAME/binding: what the scheduler does; a bound pod cannot be bound again (409)."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise KubernetesError(status=404, reason="NotFound", message=f'pods "{request.name}" not found')
            if (self._objects[key].raw.get("spec") or {}).get("nodeName"):
                raise KubernetesError(status=409, reason="Conflict", message=f"pod {request.name} is already bound")
            node = request.data["target"]["name"]
            change = {"spec": {"nodeName": node}, "metadata": {"resourceVersion": self.versions.next()}}
            self._objects[key].patch(change)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": self._objects[key].raw})
        return aiohttp.web.json_response({"kind": "Status", "status": "Success", "code": 201}, status=201)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        plural = request.resource.plural if request.resource is not None else None
        if plural == "pods" and request.subresource == "binding" and request.method == enums.method.POST:
            return await self._bind(request)
        if plural == "rljobs" and request.subresource == "scale":
            return await self._scale(request)
        content_type = request.headers.get("Content-Type", "")
        if request.action == enums.action.UPDATE and content_type.startswith("application/json-patch+json"):
            old = self._stored(request)
            if old is None:
                raise KubernetesError(status=404, reason="NotFound", message=f"{plural} {request.name!r} not found")
            # kmock finds its reactions by the request's identity, so the (frozen) request is changed in place
            object.__setattr__(request, "data", merge_diff(old, json_patch(old, request.data)))
        if plural is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if plural == "rljobs":
                request.data.update(self._admit_rljob(request.data, None))
                meta = request.data["metadata"]
            if request.namespace:
                meta["namespace"] = request.namespace  # the URL's namespace, as the API server sets it
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=self.versions.next(),
                generation=1,
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if plural in STATUS_SUBRESOURCE:
                request.data.pop("status", None)  # status is written only through the subresource
            if plural == "pods":
                request.data["status"] = {"phase": "Pending"}
            if plural == "secrets":
                _fold_string_data(request.data)
        elif plural is not None and request.action == enums.action.UPDATE and isinstance(request.data, dict):
            old = self._stored(request)
            if old is not None:
                sent_rv = (request.data.get("metadata") or {}).get("resourceVersion")
                if sent_rv is not None and sent_rv != old["metadata"].get("resourceVersion"):
                    raise KubernetesError(
                        status=409,
                        reason="Conflict",
                        message="the object has been modified; please apply your changes to "
                        "the latest version and try again",
                    )
                if plural in STATUS_SUBRESOURCE:
                    if request.subresource == "status":
                        kept = {"status": request.data.get("status")}
                    else:
                        kept = {k: v for k, v in request.data.items() if k != "status"}
                    request.data.clear()
                    request.data.update(kept)
                if plural == "secrets":
                    _fold_string_data(request.data)
                meta = request.data.setdefault("metadata", {})
                if plural == "rljobs" and "spec" in request.data:
                    merged = copy.deepcopy(old)
                    merged["spec"] = _merge(old.get("spec") or {}, request.data["spec"])
                    admitted = self._admit_rljob(merged, old)
                    request.data["spec"] = admitted["spec"]
                spec_changed = "spec" in request.data and _merge(
                    old.get("spec") or {}, request.data["spec"]
                ) != old.get("spec")
                meta["resourceVersion"] = self.versions.next()
                meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        before = self._stored(request) if request.action in (enums.action.DELETE, enums.action.UPDATE) else None
        if request.action == enums.action.DELETE and before is not None and before["metadata"].get("finalizers"):
            return await self._mark_deleted(request, before)
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        if before is not None and response.status < 300 and self._stored(request) is None:
            await self._collect_garbage(before["metadata"].get("uid"))  # deleted, or its last finalizer removed
        return response

    async def _scale(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """The CRD's scale subresource (`kubectl scale rlj`): spec.replicas is .spec.rollout.replicas, status
        replicas and selector come from .status.rolloutReplicas and .status.rolloutSelector."""
        if request.action == enums.action.UPDATE:
            replicas = ((request.data or {}).get("spec") or {}).get("replicas")
            # served as a merge patch of the RLJob itself (the request is changed in place: kmock matches by identity)
            object.__setattr__(request, "data", {"spec": {"rollout": {"replicas": replicas}}})
            object.__setattr__(request, "subresource", None)
            response = await self._handle(request)
            if response.status >= 300:
                return response
        job = self._stored(request)
        if job is None:
            raise KubernetesError(status=404, reason="NotFound", message=f'rljobs "{request.name}" not found')
        status = job.get("status") or {}
        return aiohttp.web.json_response(
            {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {k: job["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
                "spec": {"replicas": (job["spec"].get("rollout") or {}).get("replicas") or 0},
                "status": {"replicas": status.get("rolloutReplicas", 0), "selector": status.get("rolloutSelector", "")},
            }
        )

    async def _mark_deleted(self, request: rendering.Request, obj: dict[str, Any]) -> aiohttp.web.StreamResponse:
        """DELETE of an object with finalizers: only deletionTimestamp is set (once), with a new resourceVersion."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if not obj["metadata"].get("deletionTimestamp"):
                now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                self._objects[key].patch(
                    {"metadata": {"deletionTimestamp": now, "resourceVersion": self.versions.next()}}
                )
                await self._buses[request.resource].put({"type": "MODIFIED", "object": self._objects[key].raw})
            raw = copy.deepcopy(self._objects[key].raw)
        return aiohttp.web.json_response(raw, status=202)

    async def _collect_garbage(self, owner_uid: str | None) -> None:
        """Background deletion: dependents whose ownerReferences name the deleted owner go too."""
        if not owner_uid:
            return
        async with self._lock:
            dependents = [
                key
                for key, obj in self._objects.items()
                if not obj.deleted
                and any(
                    ref.get("uid") == owner_uid for ref in (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                )
            ]
            uids = []
            for key in dependents:
                uids.append(self._objects[key].raw["metadata"].get("uid"))
                raw = self._objects[key].raw
                self._objects[key].delete()
                await self._buses[key[0]].put({"type": "DELETED", "object": raw})
        for uid in uids:
            await self._collect_garbage(uid)

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_list(request)
        selector = (request.params or {}).get("labelSelector", "")
        if isinstance(payload, dict):
            payload["metadata"] = {"resourceVersion": str(self.versions.last)}
            if selector:
                payload["items"] = [item for item in payload["items"] if _visible(request, item)]
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """Subscribe before reading the history, both under the store's lock: no event falls in between."""
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        assert isinstance(bus, RecordingBus)
        since = (request.params or {}).get("resourceVersion", "")
        async with self._lock:
            marker = await bus.mark()
            if since.isdigit() and int(since) > 0:
                events = [e for e in bus.history if int(e["object"]["metadata"]["resourceVersion"]) > int(since)]
            else:  # no resourceVersion: the current objects as ADDED, then the changes
                events = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (resource, _, _), obj in self._objects.items()
                    if resource == request.resource and not obj.deleted
                ]
        try:
            for event in events:
                if _visible(request, event["object"]):
                    yield event
            async for event in bus.stream(since=marker):
                if _visible(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)


def _visible(request: rendering.Request, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    if request.namespace is not None and meta.get("namespace") != request.namespace:
        return False
    if request.name is not None and meta.get("name") != request.name:
        return False
    return matches(meta.get("labels") or {}, (request.params or {}).get("labelSelector", ""))


def _fold_string_data(secret: dict[str, Any]) -> None:
    """The API server stores Secret.stringData base64-encoded into data (and never returns stringData)."""
    plain = secret.pop("stringData", None) or {}
    if plain:
        data = secret.setdefault("data", {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in plain.items()})


class UncheckedApiServer(EmulatedApiServer):
    """A cluster whose API server skipped the CRD's validation (old Kubernetes, or CEL disabled)."""

    validate_rljobs = False


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out
