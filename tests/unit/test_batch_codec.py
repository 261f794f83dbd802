"""batch_codec.py: a training batch as JSON lists or as base64 binary arrays, decoded to the same shape."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from kuberl_workers import batch_codec


def _groups() -> list[dict[str, Any]]:
    rollout = {
        "outputIds": [0, 7, 2**31 - 1, 50_000],
        "logprobs": [-0.1, 0.0, -1e4, -2.5],  # -0.1 is not a float32: it arrives rounded to the nearest one
        "versions": [3, 3, 4, 4],
        "reward": 1.0,
        "scores": {"accuracy": 1.0},
        "finishReason": "stop",
    }
    empty = {**rollout, "outputIds": [], "logprobs": [], "versions": [], "finishReason": "length"}
    return [{"promptIndex": 5, "answer": "42", "promptIds": [1, 2, 3], "rollouts": [rollout, empty]}]


def _float32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def test_binary_batch_decodes_to_the_json_form_with_float32_logprobs() -> None:
    groups = _groups()
    as_json = batch_codec.decode(json.loads(batch_codec.encode(3, groups, "json")))
    binary = json.loads(batch_codec.encode(3, groups, "binary"))
    assert binary["encoding"] == "binary" and isinstance(binary["groups"][0]["rollouts"][0]["outputIds"], str)
    # little-endian int32 on the wire, whatever this host's byte order
    assert base64.b64decode(binary["groups"][0]["rollouts"][0]["outputIds"])[4:8] == struct.pack("<i", 7)
    decoded = batch_codec.decode(binary)
    assert as_json == {"step": 3, "groups": groups}
    expected = _groups()
    for rollout in expected[0]["rollouts"]:
        rollout["logprobs"] = [_float32(x) for x in rollout["logprobs"]]
    assert decoded == {"step": 3, "groups": expected}
    assert decoded["groups"][0]["rollouts"][0]["logprobs"][0] == pytest.approx(-0.1, rel=1e-7)


def test_unknown_encodings_and_broken_arrays_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="encoding must be one of"):
        batch_codec.encode(0, _groups(), "xml")
    with pytest.raises(ValueError, match="batch encoding must be one of"):
        batch_codec.decode({"step": 0, "encoding": "xml", "groups": []})
    binary = json.loads(batch_codec.encode(0, _groups(), "binary"))
    binary["groups"][0]["rollouts"][0]["logprobs"] = base64.b64encode(b"\0" * 6).decode()
    with pytest.raises(ValueError, match="logprobs: 6 bytes is not a whole number"):
        batch_codec.decode(binary)
    binary["groups"][0]["rollouts"][0]["logprobs"] = [0.5]  # a JSON list where base64 belongs
    with pytest.raises(ValueError, match="logprobs: expected a base64 string"):
        batch_codec.decode(binary)
    binary["groups"][0]["rollouts"][0]["logprobs"] = base64.b64encode(b"\0" * 4).decode()  # 1 item, 4 ids
    with pytest.raises(ValueError, match="per-token arrays of different lengths"):
        batch_codec.decode(binary)
