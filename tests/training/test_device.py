"""Where a run trains, and an out-of-memory error that names the setting to lower."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from raytune_ft.training.device import choose_device, limit_cpu_threads, out_of_memory_advice


def test_a_run_without_a_gpu_trains_on_the_cpu():
    assert choose_device(0) == "cpu"
    assert choose_device(0.5) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_threads_follow_the_cpus_given(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    limit_cpu_threads(0.5)
    limit_cpu_threads(3)
    assert calls == [1, 3]


def test_out_of_memory_names_max_micro_batch():
    loop = SimpleNamespace(hp=SimpleNamespace(max_micro_batch=64), batch_size=256)
    with pytest.raises(RuntimeError, match=r"^device out of memory with train.max_micro_batch="
                       r"64 \(batch_size 256\); lower train.max_micro_batch"), \
            out_of_memory_advice(loop):
        raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ValueError), out_of_memory_advice(loop):  # other errors pass through
        raise ValueError("x")

