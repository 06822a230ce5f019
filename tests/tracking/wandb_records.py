"""Read a W&B offline run file (`run-<id>.wandb`) with wandb's own protobuf records.

wandb 0.31 ships no Python reader (its DataStore moved into the Go core), so this follows the
format wandb writes: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log
blocks of 32 KiB whose chunks (checksum, length, type: full/first/middle/last) carry one
serialized `wandb_internal_pb2.Record` each.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def history(path: Path) -> list[dict[str, str]]:
    """The rows a run logged: key -> JSON text of the value."""
    return [{item.key or "/".join(item.nested_key): item.value_json
             for item in record.history.item}
            for record in records(path) if record.WhichOneof("record_type") == "history"]


def run_info(path: Path):
    """The run record: id, group, project, config."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    return None


def summary(path: Path) -> dict[str, str]:
    """The run's summary as last written: key -> JSON text of the value."""
    out = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            out.update({item.key or "/".join(item.nested_key): item.value_json
                        for item in record.summary.update})
    return out
