"""Shared fixtures: offline Hugging Face, real GLUE data, tiny random BERTs, one Ray per module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests start their own Ray; a RAY_ADDRESS from the shell would make `raytune-ft tune` join it.
os.environ.pop("RAY_ADDRESS", None)

from support import (  # noqa: E402 - after the environment
    GLUE_DIR,
    build_tiny_marian,
    build_tiny_model,
    build_tiny_vision_model,
)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "SST-2" / "train.tsv").is_file():
        pytest.fail(f"GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory) -> Path:
    """A tiny random Marian translation model with a BPE tokenizer of Multi30K pieces."""
    return build_tiny_marian(tmp_path_factory.mktemp("tiny_marian"))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's UCI digits as an ImageFolder tree (the demo's seeded 80/20 split)."""
    from raytune_ft.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> Path:
    return build_tiny_vision_model(tmp_path_factory.mktemp("tiny_resnet"))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance per test module (starting Ray costs seconds).

    address="local": never join a cluster that /tmp/ray/ray_current_cluster (left by a
    killed `ray start` or `cluster_utils.Cluster`) or RAY_ADDRESS points at.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()
