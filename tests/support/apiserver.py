"""kmock's KubernetesEmulator, extended with what a real kube-apiserver does that kuberl relies on.

Added (each pinned by tests/unit/test_apiserver_emulator.py): uid, resourceVersion, generation and
creationTimestamp on create; 201 on create; 409 on an update carrying a stale resourceVersion; generation bumped
only by spec changes; status-subresource isolation for resources that have one; equality- and existence-based
label selectors on list; foreground-less (background) ownerReference garbage collection; RLJob admission through
the CRD schema (defaulting, pruning, OpenAPI, CEL; 422 with the field causes).
Not emulated: watch bookmarks, server-side apply, field selectors, admission webhooks, quotas, RBAC.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import uuid
from typing import Any

import aiohttp.web
from kmock import KubernetesEmulator
from kmock._internal import enums, rendering
from kmock._internal.k8s import KubernetesError

from kuberl_operator.api.crd import openapi_schema
from support.schema_server import admit, apply_defaults, prune

STATUS_SUBRESOURCE = {"pods", "rljobs"}


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


class EmulatedApiServer(KubernetesEmulator):
    _counter = itertools.count(1)
    _rljob_schema: dict[str, Any] | None = None
    validate_rljobs = True  # False emulates a cluster that skipped the CRD's CEL rules

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

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        plural = request.resource.plural if request.resource is not None else None
        if plural is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if plural == "rljobs":
                request.data.update(self._admit_rljob(request.data, None))
                meta = request.data["metadata"]
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=str(next(self._counter)),
                generation=1,
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if plural in STATUS_SUBRESOURCE:
                request.data.pop("status", None)  # status is written only through the subresource
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
                meta = request.data.setdefault("metadata", {})
                if plural == "rljobs" and "spec" in request.data:
                    merged = copy.deepcopy(old)
                    merged["spec"] = _merge(old.get("spec") or {}, request.data["spec"])
                    admitted = self._admit_rljob(merged, old)
                    request.data["spec"] = admitted["spec"]
                spec_changed = "spec" in request.data and _merge(
                    old.get("spec") or {}, request.data["spec"]
                ) != old.get("spec")
                meta["resourceVersion"] = str(next(self._counter))
                meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        deleted = self._stored(request) if request.action == enums.action.DELETE and request.name else None
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        if deleted is not None and response.status < 300:
            await self._collect_garbage(deleted["metadata"].get("uid"))
        return response

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
        if selector and isinstance(payload, dict):
            payload["items"] = [
                item for item in payload["items"] if matches((item.get("metadata") or {}).get("labels") or {}, selector)
            ]
        return payload


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
