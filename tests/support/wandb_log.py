"""Read the history rows of an offline W&B run from its `.wandb` file (no network, no wandb service).

The file is W&B's LevelDB-style record log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks
of records, each with a 7-byte header (CRC32, length, type FULL/FIRST/MIDDLE/LAST) and protobuf `Record` data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, magic, _ = FILE_HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B log"
    out, pending, offset = [], b"", FILE_HEADER.size
    while offset + RECORD_HEADER.size <= len(data):
        room = BLOCK - offset % BLOCK
        if room < RECORD_HEADER.size:  # the rest of a block is padding
            offset += room
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        piece, offset = data[offset : offset + length], offset + length
        if kind == FULL:
            out.append(piece)
        elif kind == FIRST:
            pending = piece
        elif kind == MIDDLE:
            pending += piece
        elif kind == LAST:
            out.append(pending + piece)
        elif kind == 0 and length == 0:
            break
    return out


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every logged row (history record) of the offline run in `run_dir`, keys as logged, values decoded."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = run_dir.glob("run-*.wandb")
    rows = []
    for raw in records(log):
        record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf code has no stubs
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
