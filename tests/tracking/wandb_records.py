"""Read a W&B offline run file (`run-<id>.wandb`) with wandb's own protobuf records.

wandb 0.31 ships no Python reader (its DataStore moved into the Go core), so this follows the
format wandb writes: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log
blocks of 32 KiB whose chunks (checksum, length, type: full/first/middle/last) carry one
serialized `wandb_internal_pb2.Record` each.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path, timeout_s: float = 60) -> list:
    """Every record of a finished run. `Run.finish()` returns before wandb-core has written
    the run's last records (it publishes `inform_finish` and does not wait), so a file read
    at once can still lack them: this waits (at most `timeout_s`) for the run's exit record,
    the last one a finished run writes, and with it every record before it."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = _read(path)
        if any(record.WhichOneof("record_type") == "exit" for record in out):
            return out
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout_s} s"
        time.sleep(0.2)


def _read(path: Path) -> list:
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
