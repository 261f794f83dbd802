"""RBAC as sets of (API group, resource, verb): what a rendered chart grants, what docs list, what was requested."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

# kmock's parsed actions -> RBAC verbs (PATCH is the only update the operator and kopf send)
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}
ROW = re.compile(r"^\| `(?P<group>[^`]+)` \| `(?P<resource>[^`]+)` \| (?P<verbs>[a-z, ]+) \|")


class Grant(NamedTuple):
    group: str  # "" is the core group
    resource: str  # with "/subresource" where there is one
    verb: str


def granted(docs: Iterable[dict[str, Any]]) -> set[Grant]:
    """Every (group, resource, verb) of the ClusterRoles and Roles among rendered manifests."""
    out: set[Grant] = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], f"wildcard in {doc['metadata']['name']}"
            out |= {Grant(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def documented_grants(markdown: Path) -> set[Grant]:
    """The Permissions table of docs/install.md (`core` is the core group)."""
    out: set[Grant] = set()
    for line in markdown.read_text().splitlines():
        match = ROW.match(line)
        if match:
            group = "" if match["group"] == "core" else match["group"]
            out |= {Grant(group, match["resource"], v.strip()) for v in match["verbs"].split(",")}
    return out


def requested(requests: Iterable[Any], authorization: str) -> set[Grant]:
    """The grants the requests (kmock's parsed requests) sent with this Authorization header needed."""
    out: set[Grant] = set()
    for request in requests:
        headers = {key.lower(): value for key, value in request.headers.items()}
        if headers.get("authorization") != authorization or request.resource is None:
            continue
        action = getattr(request.action, "value", None)
        if action not in VERBS or not request.resource.plural:
            continue  # discovery (/api, /apis/GROUP/VERSION): open to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        out.add(Grant(request.resource.group or "", resource, VERBS[action]))
    return out
