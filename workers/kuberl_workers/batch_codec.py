"""A training batch on the wire (`GET /v1/trainer/batch`): per-token JSON lists, or the same arrays as base64 binary.

At cluster scale the JSON form costs more than the step it serves: `json.dumps` writes each logprob's shortest
repr, about 1.5 us a token on the benchmark machine (docs/benchmarks.md 1a: 221 ms for one 0.2 s step's batch at
256 replicas), and every trainer rank parses the whole document again. `encoding=binary` keeps the document's JSON
shape but carries each rollout's per-token arrays as base64 of little-endian arrays (38 ms for that batch):

- `outputIds`: int32 token ids (the API admits ids below 2**31);
- `logprobs`: float32 (vLLM computes logprobs in float32, so its values travel exactly; a value the controller got
  as a wider float is rounded to the nearest float32, as the trainer's own float32 tensors of them round it anyway);
- `versions`: int32 policy version of each token.

The document gains `"encoding": "binary"`; everything else (prompt ids, rewards, scores) stays JSON. `decode` turns
either form into the JSON one, so the trainer reads one shape.
"""

from __future__ import annotations

import base64
import json
import sys
from array import array
from typing import Any

ENCODINGS = ("json", "binary")
TOKEN_ARRAYS = {"outputIds": "i", "logprobs": "f", "versions": "i"}
"""Per-token fields of a rollout and their array typecodes (int32, float32, int32)."""

assert array("i").itemsize == 4 and array("f").itemsize == 4, "kuberl's binary batch needs 4-byte C int and float"


def encode(step: int, groups: list[dict[str, Any]], encoding: str) -> bytes:
    """The response body of a batch in `encoding` (one of ENCODINGS; ValueError otherwise).

    `groups` as Batch.groups holds them: per rollout, `outputIds`, `logprobs` and `versions` as lists.
    """
    if encoding == "json":
        return json.dumps({"step": step, "groups": groups}).encode()
    if encoding != "binary":
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    packed = [{**group, "rollouts": [_pack(rollout) for rollout in group["rollouts"]]} for group in groups]
    return json.dumps({"step": step, "encoding": "binary", "groups": packed}).encode()


def decode(document: dict[str, Any]) -> dict[str, Any]:
    """A parsed batch document in either encoding, in the JSON form (per-token lists). A document without
    `encoding` is JSON already and is returned as it is. Raises ValueError, naming the field, for an unknown
    encoding, an array that is not base64 or not a whole number of items, or a rollout whose arrays differ in length.
    """
    encoding = document.get("encoding", "json")
    if encoding == "json":
        return document
    if encoding != "binary":
        raise ValueError(f"batch encoding must be one of {ENCODINGS}, got {encoding!r}")
    groups = [{**group, "rollouts": [_unpack(r) for r in group["rollouts"]]} for group in document["groups"]]
    return {**{k: v for k, v in document.items() if k != "encoding"}, "groups": groups}


def _pack(rollout: dict[str, Any]) -> dict[str, Any]:
    out = dict(rollout)
    for name, typecode in TOKEN_ARRAYS.items():
        values = array(typecode, rollout[name])
        if sys.byteorder == "big":
            values.byteswap()
        out[name] = base64.b64encode(values.tobytes()).decode("ascii")
    return out


def _unpack(rollout: dict[str, Any]) -> dict[str, Any]:
    out = dict(rollout)
    for name, typecode in TOKEN_ARRAYS.items():
        try:
            raw = base64.b64decode(rollout[name], validate=True)
        except (KeyError, TypeError, ValueError) as error:  # binascii.Error is a ValueError
            raise ValueError(f"{name}: expected a base64 string ({type(error).__name__}: {error})") from None
        if len(raw) % 4:
            raise ValueError(f"{name}: {len(raw)} bytes is not a whole number of 4-byte items")
        values = array(typecode)
        values.frombytes(raw)
        if sys.byteorder == "big":
            values.byteswap()
        out[name] = values.tolist()
    lengths = {name: len(out[name]) for name in TOKEN_ARRAYS}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-token arrays of different lengths: {lengths}")
    return out
