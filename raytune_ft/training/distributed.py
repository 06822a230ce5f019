"""Data-parallel training of one trial on several workers (torch.distributed). No Ray in here.

Every rank holds the whole model and the same optimizer; each optimizer step's global batch
(the sample stream's next `batch_size` samples, as on one worker) is split into one share
per rank (`np.array_split`: uneven shares allowed, a share may be empty). Each rank sums the
loss of its share over its micro-batches; the gradients, the summed losses and the loss units
are then summed over the ranks, and the gradient divided by the global units: the big batch's
gradient, whatever the shares, to float tolerance. Every rank then takes the same optimizer
step on the same numbers, so the weights stay equal without a broadcast. Evaluation batches
are dealt round-robin and the predictions gathered on every rank, so each computes the same
metrics over the whole evaluation set.

`SINGLE` is one worker: no process group, no collective, the loop's code path unchanged.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# A worker that died leaves the others waiting in a collective; they give up after this (and
# rank 0 then raises the worker's own error: tuning/workers.py).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the workers of one trial."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, indices: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch: contiguous, sizes differ by at most one."""
        if not self.distributed:
            return indices
        return np.array_split(indices, self.size)[self.rank]

    def deal(self, items: list) -> list:
        """This rank's items of a list dealt round-robin (evaluation batches)."""
        return items if not self.distributed else items[self.rank::self.size]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (a float64 or int64 host/device tensor)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, flattened into one buffer. A rank
        whose share was empty (or that left a parameter unused) contributes zeros; a
        parameter no rank used keeps no gradient, so the optimizer skips it as on one worker."""
        if not self.distributed:
            return
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                            device=params[0].device)
        torch.distributed.all_reduce(used)
        params = [p for p, count in zip(params, used.tolist()) if count]
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        offset = 0
        for param in params:
            count = param.numel()
            param.grad.copy_(flat[offset:offset + count].view_as(param))
            offset += count

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank after a step, as
        torch DDP does, so every rank evaluates and checkpoints the same model."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in model.buffers():
                torch.distributed.broadcast(tensor.data, src=0)

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's weights (and buffers) on every rank: one starting point, whatever each
        process's initialisation drew."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)


SINGLE = World()


def init_world(rank: int, size: int, address: str, backend: str) -> World:
    """Join the trial's process group at `address` ("tcp://host:port" of rank 0)."""
    if size > 1:
        torch.distributed.init_process_group(backend, init_method=address, rank=rank,
                                             world_size=size, timeout=COLLECTIVE_TIMEOUT)
    return World(rank, size)


def leave_world(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def backend_for(device: str) -> str:
    """gloo between CPU workers, NCCL between GPUs."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"
