"""Length-grouped sample order and per-batch dynamic padding (pure functions).

The training stream is a sequence of epochs; epoch `e` visits every sample once in an order
that depends only on (seed, e): shuffled, then sorted by length inside windows of
`window` samples, so neighbouring samples have similar lengths. A batch is the next
`batch_size` samples of the stream from the current position. Because the order does not
depend on the batch size, a batch-size change (PBT, a batch-size schedule) or a restore
continues from exactly the same sample.
"""

from __future__ import annotations

import numpy as np
import torch

from raytune_ft.data import TokenizedSplit
from raytune_ft.plan import accumulation_steps


def epoch_order(lengths: np.ndarray, epoch: int, seed: int, window: int) -> np.ndarray:
    """Sample indices of one epoch: a seeded shuffle, sorted by length within windows."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        order[start:start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    return order


class SampleStream:
    """The indices at any position of the training stream, with one epoch cached."""

    def __init__(self, lengths: np.ndarray, seed: int, window: int) -> None:
        self.lengths, self.seed, self.window = lengths, seed, window
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = epoch_order(self.lengths, epoch, self.seed, self.window)
        return self._order

    def take(self, position: int, count: int) -> np.ndarray:
        """`count` sample indices starting at stream position `position` (samples seen)."""
        n = len(self.lengths)
        parts = []
        while count > 0:
            epoch, offset = divmod(position, n)
            part = self._order_of(epoch)[offset:offset + count]
            parts.append(part)
            position += len(part)
            count -= len(part)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def micro_batches(indices: np.ndarray, max_micro_batch: int) -> list[np.ndarray]:
    """Split one optimizer batch into ceil(B / max_micro_batch) near-equal micro-batches."""
    pieces = accumulation_steps(len(indices), max_micro_batch)
    return [part for part in np.array_split(indices, pieces) if len(part)]


def collate(split: TokenizedSplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """Pad the examples at `indices` to the longest of them (not to max_length)."""
    starts, ends = split.offsets[indices], split.offsets[indices + 1]
    width = int((ends - starts).max())
    ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64) if split.type_ids is not None else None
    for row, (start, end) in enumerate(zip(starts, ends)):
        ids[row, :end - start] = split.ids[start:end]
        mask[row, :end - start] = 1
        if types is not None:
            types[row, :end - start] = split.type_ids[start:end]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(split.labels[indices])}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def eval_batches(split: TokenizedSplit, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length, so padding is nearly zero."""
    order = np.argsort(split.lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(split: TokenizedSplit, batches: list[np.ndarray]) -> float:
    """Share of token slots that are padding, for a list of batches."""
    lengths = split.lengths
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - sum(int(lengths[b].sum()) for b in batches) / slots
