"""A model folder whose tokenizer cannot be the model's is refused before Ray starts.

Without its vocabulary files, AutoTokenizer builds a 5-token tokenizer from config.json alone:
every word becomes [UNK] and a trial would end quietly at the majority-class accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from raytune_ft.errors import ModelError
from raytune_ft.schema import data_settings
from raytune_ft.tasks.sequence_classification import TokenizedSplit, build_bundle
from raytune_ft.training.model import check_tokenizer, load_tokenizer, unknown_share


def without_tokenizer(model: Path, folder: Path, vocab_size: int | None = None) -> Path:
    """A copy of `model` with only config.json and weights (optionally another vocab_size)."""
    folder.mkdir()
    shutil.copy(model / "model.safetensors", folder / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _bundle(model: Path, glue_dir: Path):
    tokenizer = load_tokenizer(str(model))
    cfg = data_settings(task="sst2", path=str(glue_dir), max_train_samples=1200)
    return tokenizer, build_bundle(cfg, tokenizer, max_length=64)


def test_unknown_share_counts_word_tokens_only():
    ids = np.array([101, 100, 5, 6, 100, 102, 0, 0], dtype=np.int32)  # CLS .. SEP PAD PAD
    assert unknown_share(ids, {0, 100, 101, 102}, 100) == 0.5  # 2 of [100, 5, 6, 100]
    assert unknown_share(ids, {0, 100, 101, 102}, None) == 0.0  # no unknown token at all
    assert unknown_share(np.array([101, 102]), {101, 102, 100}, 100) == 0.0


def test_the_tiny_model_tokenizer_passes(tiny_bert, glue_dir):
    tokenizer, bundle = _bundle(tiny_bert, glue_dir)
    sample = bundle.train.ids[: bundle.train.offsets[1000]]
    assert unknown_share(sample, set(tokenizer.all_special_ids), tokenizer.unk_token_id) == 0.0
    check_tokenizer(tokenizer, str(tiny_bert), bundle.train)  # no error


def test_folder_without_tokenizer_files_is_refused(tiny_bert, glue_dir, tmp_path):
    folder = without_tokenizer(tiny_bert, tmp_path / "no_tokenizer")
    tokenizer, bundle = _bundle(folder, glue_dir)
    assert len(tokenizer) == 5  # what AutoTokenizer builds from config.json alone
    with pytest.raises(ModelError, match=rf"model.name: the tokenizer of {folder} cannot be the "
                                         r"one .* 5 tokens against vocab_size 30522 in the "
                                         r"model's config, and 100% of the word tokens in the "
                                         r"first 1000 training examples are unknown \(\[UNK\]\)"):
        check_tokenizer(tokenizer, str(folder), bundle.train)


def test_mostly_unknown_words_are_refused_without_the_size_rule(tiny_bert, glue_dir, tmp_path):
    # vocab_size 8: the 5-token tokenizer is not "far smaller"; the unknown share alone decides.
    folder = without_tokenizer(tiny_bert, tmp_path / "no_tokenizer", vocab_size=8)
    tokenizer, bundle = _bundle(folder, glue_dir)
    with pytest.raises(ModelError, match=r"5 tokens against vocab_size 8 in the model's config, "
                                         r"and 100% of the word tokens"):
        check_tokenizer(tokenizer, str(folder), bundle.train)


class _Tokenizer:
    """Stands in for a tokenizer: a size, special ids and an unknown id."""

    all_special_ids, unk_token_id, unk_token = [0, 1, 2], 1, "[UNK]"

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _split(unknown: int, words: int) -> TokenizedSplit:
    """One example: CLS, `unknown` [UNK] and `words - unknown` known tokens, SEP."""
    ids = np.array([0] + [1] * unknown + [7] * (words - unknown) + [2], dtype=np.int32)
    return TokenizedSplit(ids, None, np.array([0, len(ids)]), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize(("size", "unknown", "refused"), [
    (5000, 5, False),  # half the vocab_size 10000, half the words unknown: both at the limit
    (4999, 0, True),  # below half the embedding table
    (10000, 6, True),  # 60% of the words unknown
])
def test_limits(tmp_path, size, unknown, refused):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10000}))
    if refused:
        message = f"{size} tokens against vocab_size 10000 .* {unknown * 10}% of the word tokens"
        with pytest.raises(ModelError, match=message):
            check_tokenizer(_Tokenizer(size), str(tmp_path), _split(unknown, 10))
    else:
        check_tokenizer(_Tokenizer(size), str(tmp_path), _split(unknown, 10))
