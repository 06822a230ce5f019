"""Where a run trains: the device, the CPU threads, and an out-of-memory error that says
which setting to change. No Ray in here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def choose_device(gpus: float) -> str:
    """"cuda" when the run was given a GPU (or a fraction of one) and one is visible."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def limit_cpu_threads(cpus: float) -> None:
    """torch's intra-op threads to the CPUs the run was given: trials sharing a node do not
    oversubscribe its cores."""
    torch.set_num_threads(max(1, int(cpus)))


@contextlib.contextmanager
def out_of_memory_advice(loop) -> Iterator[None]:
    """Turn the device running out of memory inside the block into an error that names the
    setting to lower; `loop` is the `FineTuneLoop` training there."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise RuntimeError(
            f"device out of memory with train.max_micro_batch={loop.hp.max_micro_batch} "
            f"(batch_size {loop.batch_size}); lower train.max_micro_batch, gradient "
            "accumulation keeps the effective batch") from None
