"""Read TensorBoard event files back (TFRecord framing, tensorboardX's Event proto): {tag: {step: value}}."""

from __future__ import annotations

import struct
from pathlib import Path


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            record = data[at + 12 : at + 12 + length]  # after the length and its CRC; the data's CRC follows
            at += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out
