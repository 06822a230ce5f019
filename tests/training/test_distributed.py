"""Data-parallel trials with numbers: two gloo workers follow the one-worker trajectory
(uneven shares, accumulation per rank), report the same metrics, and a checkpoint moves
between worker counts (2 -> 1, 1 -> 2) and continues as if nothing had changed."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from raytune_ft.config import TrainConfig
from raytune_ft.schema import data_settings
from raytune_ft.tasks import get_task
from raytune_ft.tasks.sequence_classification import build_bundle, load_model
from raytune_ft.training.distributed import SINGLE, World, init_world, leave_world
from raytune_ft.training.loop import FineTuneLoop

# batch 79 over 2 ranks: shares of 40 and 39, each in micro-batches of at most 4; then the
# step cut at the evaluation point (80 samples) has 1 sample, and rank 1 an empty share
SETTINGS = {"max_epochs": 1.0, "eval_every_epochs": 0.5, "learning_rate": 1e-3,
            "batch_size": 79, "max_micro_batch": 4, "schedule": "linear",
            "warmup_ratio": 0.1, "eval_batch_size": 24}


def make_loop(model_dir: str, glue_dir: str, world: World = SINGLE) -> FineTuneLoop:
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bundle = build_bundle(data_settings(task="sst2", path=glue_dir, max_train_samples=160,
                                     max_eval_samples=64), tokenizer, max_length=48)
    model = load_model(model_dir, bundle.label_names, seed=0)
    for module in model.modules():  # dropout masks are drawn per rank: compare without
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return FineTuneLoop(model, bundle, TrainConfig(**SETTINGS), world=world,
                        task=get_task(bundle.kind))


def _rank(rank: int, size: int, port: int, model_dir: str, glue_dir: str, out: str,
          load_from: str | None, intervals: int) -> None:
    world = init_world(rank, size, f"tcp://127.0.0.1:{port}", "gloo")
    try:
        loop = make_loop(model_dir, glue_dir, world)
        if load_from:
            loop.load(load_from)
        reports = [loop.run_interval() for _ in range(intervals)]
        if rank == 0:
            loop.save(Path(out) / "ckpt")
            (Path(out) / "reports.json").write_text(json.dumps(reports))
    finally:
        leave_world(world)


def run_workers(size: int, model_dir, glue_dir, out: Path, load_from=None, intervals=1):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_rank, args=(size, port, str(model_dir), str(glue_dir), str(out),
                                    load_from and str(load_from), intervals),
                       nprocs=size, start_method="spawn")
    return json.loads((out / "reports.json").read_text()), out / "ckpt"


def close(a: dict, b: dict) -> None:
    for key in ("samples_seen", "step", "batch_size", "eval_accuracy", "eval_mcc"):
        assert a[key] == b[key], key
    for key in ("eval_loss", "train_loss", "lr"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def same_weights(loop: FineTuneLoop, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "model.safetensors")
    for name, value in loop.model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(saved[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def straight(tiny_bert, glue_dir):
    """One worker, two intervals, its first-interval checkpoint and every report."""
    loop = make_loop(str(tiny_bert), str(glue_dir))
    first = loop.run_interval()
    return loop, first, loop.run_interval()


def test_shares_split_every_batch_once():
    batch = np.arange(15)
    shares = [World(rank, 2).share(batch) for rank in range(2)]
    assert [len(s) for s in shares] == [8, 7]
    assert np.array_equal(np.concatenate(shares), batch)  # no sample twice, none left out
    assert [len(World(rank, 4).share(np.arange(2))) for rank in range(4)] == [1, 1, 0, 0]
    assert World(1, 3).deal(list(range(8))) == [1, 4, 7]


def test_two_workers_follow_one_worker_and_restore_across_worker_counts(
        straight, tiny_bert, glue_dir, tmp_path):
    one, first, second = straight
    # 2 workers, interval 1: the same position, metrics and weights as one worker
    two_first, two_ckpt = run_workers(2, tiny_bert, glue_dir, tmp_path / "two")
    close(two_first[0], first)
    # 2 -> 1: the two-worker checkpoint continues on one worker as the straight run did
    resumed = make_loop(str(tiny_bert), str(glue_dir))
    resumed.load(two_ckpt)
    assert resumed.state.samples_seen == 80 and resumed.state.step == first["step"]
    close(resumed.run_interval(), second)
    for name, value in one.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-4,
                                   atol=1e-5, msg=name)
    # 1 -> 2: a one-worker checkpoint continues on two workers, to the same end
    single = make_loop(str(tiny_bert), str(glue_dir))
    single.run_interval()
    single.save(tmp_path / "one_ckpt")
    two_second, end = run_workers(2, tiny_bert, glue_dir, tmp_path / "two_more",
                                  load_from=tmp_path / "one_ckpt")
    close(two_second[0], second)
    same_weights(one, end)
