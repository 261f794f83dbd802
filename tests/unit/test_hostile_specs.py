"""Hostile and invalid RLJob specs are refused with a message naming the field (docs/reliability.md's table)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from support.hostile import HOSTILE, hostile_doc, table_markdown, verdicts

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_at_least_forty_cases_of_both_layers() -> None:
    assert len(HOSTILE) >= 40
    assert len({case for case, *_ in HOSTILE}) == len(HOSTILE)
    assert sum(1 for *_, layer in HOSTILE if layer == "operator") >= 10


@pytest.mark.parametrize(("case", "what", "mutations", "field", "layer"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_refused_at_its_layer_naming_the_field(
    schema: dict[str, Any], case: str, what: str, mutations: dict[str, Any], field: str, layer: str
) -> None:
    server, ours = verdicts(hostile_doc(mutations), schema)
    # the operator refuses every case itself (a cluster that skipped CEL or schema still gets InvalidSpec)
    assert field in ours, f"operator: {ours}"
    assert ours[field] and ours[field] != "invalid", ours
    if layer == "api":
        assert field in server, f"API server accepted it: {server}"
    else:
        assert server == {}, f"the CRD refuses it too: update the layer ({server})"


def test_reliability_doc_has_the_current_table(schema: dict[str, Any]) -> None:
    text = DOC.read_text()
    block = re.search(r"<!-- hostile-table:start -->\n(.*?)\n<!-- hostile-table:end -->", text, re.S)
    assert block, "docs/reliability.md lacks the hostile-table markers"
    assert block[1] == table_markdown(schema), "stale table: PYTHONPATH=tests .venv/bin/python -m support.hostile"
