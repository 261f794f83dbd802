"""The emulated API server of the cluster benchmarks: kmock's emulator as the tests extend it, with the time of every
request kept, and made fast enough for 100 jobs without changing what it answers.
"""

from __future__ import annotations

import time
from typing import Any

from kmock._internal import apps, dsl, k8s, rendering

from bench import common  # noqa: F401 - puts tests/ on sys.path for support.*
from support.apiserver import EmulatedApiServer
from support.kubeapi import OPERATOR_TOKEN

OPERATOR_AUTH = f"Bearer {OPERATOR_TOKEN}"
WRITES = {"CREATE", "UPDATE", "DELETE"}


class _DirectMatch(apps.RawHandler):
    """kmock's choice of the reaction that serves a request, decided on that request alone.

    kmock asks `request in reaction_source`, which replays every request served so far through the reaction's
    filters: each request costs O(requests so far), and a busy run slows down quadratically (100 jobs stalled the
    server within a minute). The emulator's reactions are plain filters, so the same answer comes from applying
    their criteria to this one request (other kinds of views, which the emulator does not use, are refused).
    """

    _order: tuple[tuple[int, ...], list[Any]] = ((), [])

    def _ordered(self) -> list[Any]:
        """The reactions by priority, as RawHandler._handle orders them (cached: they rarely change)."""
        key = tuple(id(payload) for payload in self._payloads)
        if self._order[0] != key:
            priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
            width = max((len(p) for p in priorities), default=0)
            padded = [p + (0,) * (width - len(p)) for p in priorities]
            order = sorted(range(len(padded)), key=lambda index: padded[index])
            self._order = (key, [self._payloads[index] for index in order])
        return self._order[1]

    async def _handle(self, request: Any) -> Any:
        for payload in self._ordered():
            if _sees(payload._source, request) and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("no reaction matches the request")


def _sees(view: Any, request: Any) -> bool:
    """Whether the chain of plain filters `view` lets `request` through (the emulator has no other kind)."""
    if type(view) is dsl.Filter:
        return bool(view.criteria(request)) and _sees(view._source, request)
    if type(view) is dsl.Priority:
        return _sees(view._source, request)
    if isinstance(view, dsl.Root):
        return True
    raise NotImplementedError(f"not a plain filter chain: {view!r}")


class TimedApiServer(EmulatedApiServer, _DirectMatch):
    """The emulated API server, also keeping when each request arrived (monotonic clock, as the benchmarks use).

    Made fast enough for 100 jobs without changing what it answers: reactions are matched per request (see
    _DirectMatch), a get finds its object by key, and a list compares resources by their plural name first (kmock
    compares every stored object's resource on every request, with a slow __eq__).
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.stamps: list[tuple[float, Any]] = []
        self._resource_cache: tuple[int, set[Any]] = (-1, set())

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:  # kmock's private name
        store = self._objects._objects  # the dict behind kmock's ObjectsArray
        if request.name is not None and (strict or request.namespace is not None):
            found = store.get((request.resource, request.namespace, request.name))
            return [] if found is None else [found]
        plural = request.resource.plural
        return [
            obj
            for (resource, namespace, name), obj in store.items()
            if resource.plural == plural
            and resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        ]

    def _get_resources(self) -> list[Any]:
        store = self._objects._objects
        if self._resource_cache[0] != len(store):  # a new resource comes only with a new object
            self._resource_cache = (len(store), {resource for resource, _, _ in store})
        return list(set(k8s.KubernetesScaffold._get_resources(self)) | self._resource_cache[1])

    async def _handle(self, request: Any) -> Any:
        self.stamps.append((time.monotonic(), request))
        self._requests.clear()  # kmock's own log of requests: unused here, and `stamps` keeps them
        return await super()._handle(request)


def access(request: Any) -> str:
    """READ (get, list, watch) or WRITE (create, patch, delete) or OTHER (discovery)."""
    action = getattr(request.action, "value", None)
    if request.resource is None or not request.resource.plural or action is None:
        return "OTHER"
    return "WRITE" if action in WRITES else "READ"


def by_operator(request: Any) -> bool:
    return {k.lower(): v for k, v in request.headers.items()}.get("authorization") == OPERATOR_AUTH


def describe(request: Any) -> str:
    """e.g. `PATCH rljobs/status` or `WATCH pods`, for tables of what was sent."""
    plural = request.resource.plural if request.resource is not None else "?"
    sub = f"/{request.subresource}" if request.subresource else ""
    return f"{getattr(request.action, 'value', request.method)} {plural}{sub}"
