"""Length-grouped order, micro-batches, eval batches: no sample lost, little padding.
(Per-batch padding is the task's: tests/tasks/test_sequence_classification.py.)"""

import numpy as np

from raytune_ft.tasks.sequence_classification import TokenizedSplit
from raytune_ft.training.batching import (
    SampleStream,
    epoch_order,
    eval_batches,
    micro_batches,
    padding_fraction,
)


def make_split(lengths):
    lengths = np.asarray(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32)
    return TokenizedSplit(ids, np.ones(offsets[-1], dtype=np.int8), offsets,
                          np.arange(len(lengths)) % 2)


def test_epoch_order_is_a_permutation_grouped_by_length():
    lengths = np.random.default_rng(1).integers(3, 60, size=1000)
    order = epoch_order(lengths, epoch=0, seed=7, window=200)
    assert sorted(order) == list(range(1000))
    for start in range(0, 1000, 200):
        window = lengths[order[start:start + 200]]
        assert (np.diff(window) >= 0).all()
    assert (order == epoch_order(lengths, 0, 7, 200)).all()
    assert not (order == epoch_order(lengths, 1, 7, 200)).all()


def test_stream_positions_do_not_depend_on_batch_size():
    lengths = np.random.default_rng(2).integers(3, 60, size=100)
    stream = SampleStream(lengths, seed=0, window=32)
    in_16s = np.concatenate([stream.take(p, 16) for p in range(0, 240, 16)])
    mixed = np.concatenate([stream.take(0, 7), stream.take(7, 64), stream.take(71, 169)])
    assert (in_16s == mixed).all()
    # every epoch visits every sample exactly once, across the epoch boundary
    assert sorted(stream.take(0, 100)) == list(range(100))
    assert sorted(stream.take(100, 100)) == list(range(100))


def test_micro_batches_cover_the_batch_once():
    indices = np.arange(37)
    parts = micro_batches(indices, 8)
    assert len(parts) == 5 and max(len(p) for p in parts) <= 8
    assert (np.concatenate(parts) == indices).all()
    assert len(micro_batches(np.arange(32), 32)) == 1


def test_eval_batches_sorted_and_complete():
    split = make_split(np.random.default_rng(3).integers(2, 40, size=300))
    batches = eval_batches(split, 64)
    assert sorted(np.concatenate(batches)) == list(range(300))
    shuffled = np.random.default_rng(4).permutation(300)
    random_batches = [shuffled[i:i + 64] for i in range(0, 300, 64)]
    assert padding_fraction(split, batches) < padding_fraction(split, random_batches) / 2
