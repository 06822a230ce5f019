"""Length-grouped sample order, micro-batches and evaluation batches (pure functions).

The training stream is a sequence of epochs; epoch `e` visits every sample once in an order
that depends only on (seed, e), never on the batch size. A batch is the next `batch_size`
samples of the stream from the current position, so a batch-size change (PBT, a batch-size
schedule) or a restore continues from exactly the same sample.

The order groups lengths without a curriculum. The epoch is shuffled, sorted by length inside
windows of `window` samples, and each sorted window is cut into blocks of `BLOCK` samples of
similar length, so a batch inside one block carries little padding. The blocks of the whole
epoch then come in a random order that keeps the tokens seen so far near the data's average
(`balanced_block_order`): over any stretch of a few blocks the lengths seen are those of the
data. Sorted windows consumed in order, as this module used to do, trained every window from
its shortest sample to its longest: with one window per epoch, a length curriculum per epoch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from raytune_ft.plan import accumulation_steps


class Split(Protocol):
    """An encoded split: its examples are numbered 0..len-1."""

    def __len__(self) -> int: ...

    @property
    def lengths(self) -> np.ndarray: ...  # per example; batches group by it (1 per image)

# Samples per block of similar length. A power of two so that batches of 8-64 taken from a
# block boundary stay in one block; small enough that a tenth of a 2,000-sample epoch still
# holds three blocks. It must not depend on the batch size (the order would change with it).
BLOCK = 64


def epoch_order(lengths: np.ndarray, epoch: int, seed: int, window: int) -> np.ndarray:
    """Sample indices of one epoch: length-sorted blocks in a balanced random order.

    `window` 1 means no sorting (a plain seeded shuffle). A larger window is rounded up to a
    whole number of blocks (blocks are `window` samples when it is below `BLOCK`). The last
    `len(lengths) % block` shuffled samples end the epoch unsorted (a random sample, so the
    epoch's end has no length bias), and every block before them is full and starts at a
    multiple of the block size.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if window <= 1:
        return order
    block = min(BLOCK, window)
    window = -(-window // block) * block
    full = len(order) - len(order) % block
    body, rest = order[:full], order[full:]
    body = body[np.lexsort((lengths[body], np.arange(full) // window))]
    blocks = body.reshape(-1, block)
    sequence = balanced_block_order(lengths[blocks].sum(axis=1), rng)
    return np.concatenate([blocks[sequence].ravel(), rest])


def balanced_block_order(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of blocks whose running token count tracks the average block.

    Blocks are split into those at or below the average and those above it, each shuffled;
    the next block comes from the shorter pool while the blocks so far hold more tokens than
    the average would, else from the longer pool. Integer arithmetic: same order everywhere.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    count, total = len(tokens), int(tokens.sum())
    shuffled = rng.permutation(count)
    at_most = tokens[shuffled] * count <= total
    shorter, longer = list(shuffled[at_most][::-1]), list(shuffled[~at_most][::-1])
    sequence, excess = [], 0  # count x (tokens so far - average x blocks so far)
    while shorter or longer:
        pool = shorter if (excess > 0 and shorter) or not longer else longer
        index = pool.pop()
        sequence.append(index)
        excess += int(tokens[index]) * count - total
    return np.asarray(sequence, dtype=np.int64)


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


def eval_batches(split: Split, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length, so padding is nearly zero."""
    order = np.argsort(split.lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(split: Split, batches: list[np.ndarray]) -> float:
    """Share of token slots that are padding, for a list of batches."""
    lengths = split.lengths
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - sum(int(lengths[b].sum()) for b in batches) / slots
