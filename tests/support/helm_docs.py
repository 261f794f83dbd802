"""The chart README's values table, generated from values.yaml's `# --` comments (helm-docs style).

`make chart-docs` writes charts/kuberl/README.md with it; a test fails when the README drifts from values.yaml
or a value has no `# --` comment.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "kuberl"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def documented_values(values_file: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """[(dotted key, description)] for every documented value, and the keys that lack a `# --` comment.

    A documented key is a leaf of the table (its children are its default); an undocumented key is fine only
    when it is a map whose keys are all documented.
    """
    documented: list[tuple[str, str]] = []
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    lines = values_file.read_text().splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if match is None:
            comment = [] if not stripped.startswith("-") else comment
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_documented = any(doc for _, _, doc in stack)
        dotted = ".".join([k for _, k, _ in stack] + [match["key"]])
        has_children = not match["rest"].strip() and _next_is_child(lines, number, indent)
        if not inside_documented:
            if comment:
                documented.append((dotted, " ".join(comment)))
            elif not has_children:
                missing.append(dotted)
        stack.append((indent, match["key"], bool(comment) or inside_documented))
        comment = []
    return documented, missing


def _next_is_child(lines: list[str], number: int, indent: int) -> bool:
    for line in lines[number + 1 :]:
        if not line.strip() or line.strip().startswith("#"):
            continue
        return len(line) - len(line.lstrip(" ")) > indent or line.lstrip().startswith("-")
    return False


def _default(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), "string"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(chart: Path = CHART) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    documented, _ = documented_values(chart / "values.yaml")
    rows = [
        f"| `{key}` | {_type(_default(values, key))} | `{json.dumps(_default(values, key))}` | {_cell(text)} |"
        for key, text in documented
    ]
    return "\n".join(
        [
            f"# {meta['name']}",
            "",
            f"{meta['description']}.",
            "",
            f"Chart version {meta['version']}, app version {meta['appVersion']}. Install, upgrade and the CRD policy:",
            "[docs/install.md](../../docs/install.md).",
            "",
            "<!-- Generated from values.yaml by `make chart-docs`; a test fails when this file drifts. -->",
            "",
            "## Values",
            "",
            "| Key | Type | Default | Description |",
            "|-----|------|---------|-------------|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.stdout.write(render())
