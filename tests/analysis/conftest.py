"""Real Ray Tune experiment directories, built once for the analysis tests.

Ray is started once, every experiment is run, and Ray is shut down before any test reads
a directory: the analysis itself must work without a running Ray.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import _ray_experiments as rx  # noqa: E402


@pytest.fixture(scope="session")
def experiments(tmp_path_factory) -> dict[str, Path]:
    """name -> experiment dir for: asha, pbt, restored (a trial failed once and resumed),
    encodings (two trials with their own samples per epoch)."""
    import ray

    storage = tmp_path_factory.mktemp("ray_results")
    markers = tmp_path_factory.mktemp("markers")
    from ray import cloudpickle

    # the trainable lives in a test helper that Ray's workers cannot import: ship it by value
    cloudpickle.register_pickle_by_value(rx)
    started = not ray.is_initialized()
    if started:
        # "local": a stale /tmp/ray/ray_current_cluster or RAY_ADDRESS must not be joined
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    try:
        exps = {
            "asha": rx.build_asha(storage),
            "pbt": rx.build_pbt(storage),
            "restored": rx.build_restored(storage, markers),
            "encodings": rx.build_encodings(storage),
        }
    finally:
        if started:
            ray.shutdown()
    return exps


@pytest.fixture
def copy_experiment(experiments, tmp_path):
    """A private copy of one experiment, for tests that damage or extend it."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(experiments[name], dst, ignore=shutil.ignore_patterns("analysis"))
        return dst

    return make
