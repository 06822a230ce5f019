"""GLUE readers on the real files, tabular files, tokenization once with no padding."""

import json

import numpy as np
import pandas as pd
import pytest

from raytune_ft.config import DataConfig
from raytune_ft.data import build_bundle, read_splits, subset
from raytune_ft.errors import DataError


def test_mrpc_rows_bom_and_quotes(glue_dir):
    train, dev, labels = read_splits(DataConfig(task="mrpc", path=str(glue_dir)))
    assert (len(train.labels), len(dev.labels)) == (3668, 408)
    assert labels == ["0", "1"]
    assert int(train.labels.sum()) == 2474 and int(dev.labels.sum()) == 279
    # The BOM is stripped (the label column is found) and quotes are literal text.
    assert any('"' in sentence for sentence in train.texts[0])
    assert len(train.texts) == 2


def test_sst2_rows_and_labels(glue_dir):
    train, dev, _ = read_splits(DataConfig(task="sst2", path=str(glue_dir)))
    assert (len(train.labels), len(dev.labels)) == (67349, 872)
    assert int(train.labels.sum()) == 37569 and int(dev.labels.sum()) == 444
    assert len(train.texts) == 1


def test_environment_variable_points_at_the_glue_folder(glue_dir, monkeypatch):
    monkeypatch.setenv("RAYTUNE_FT_DATA_DIR", str(glue_dir))
    _, dev, _ = read_splits(DataConfig(task="SST-2"))
    assert len(dev.labels) == 872


def test_subset_is_fixed_by_its_seed(glue_dir):
    train, _, _ = read_splits(DataConfig(task="sst2", path=str(glue_dir)))
    a, b = subset(train, 100, 0), subset(train, 100, 0)
    assert a.texts == b.texts and len(a.labels) == 100
    assert subset(train, 100, 1).texts != a.texts


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_tabular_files_with_named_columns(tmp_path, suffix):
    frame = pd.DataFrame({"text": ["good film", "bad film", "fine"], "y": ["pos", "neg", "pos"]})
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    cfg = DataConfig(train_file=str(path), eval_file=str(path), text_columns=["text"],
                     label_column="y")
    train, _, labels = read_splits(cfg)
    assert labels == ["neg", "pos"] and train.labels.tolist() == [1, 0, 1]


def test_missing_column_lists_the_columns_present(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"sentence": ["a"], "label": [1]}).to_csv(path, index=False)
    cfg = DataConfig(train_file=str(path), eval_file=str(path), text_columns=["text"],
                     label_column="label")
    with pytest.raises(DataError, match="data.text_columns: 'text' not found; columns present "
                                        "in data.train_file: sentence, label"):
        read_splits(cfg)


def test_tokenized_once_without_padding(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = DataConfig(task="mrpc", path=str(glue_dir), max_train_samples=50)
    bundle = build_bundle(cfg, tokenizer, max_length=64)
    lengths = bundle.train.lengths
    assert len(bundle.train) == 50 and len(bundle.eval) == 408
    assert lengths.max() <= 64 and lengths.min() < 64  # truncated, never padded
    first = bundle.train.ids[: lengths[0]]
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    assert set(np.unique(bundle.train.type_ids)) == {0, 1}  # sentence pairs
    assert bundle.metrics == ["eval_accuracy", "eval_loss", "eval_mcc", "eval_f1"]


def test_the_schema_and_the_readers_know_the_same_tasks():
    from raytune_ft.config import GLUE_TASK_NAMES
    from raytune_ft.data import GLUE_TASKS, canonical_task

    assert set(GLUE_TASK_NAMES) == set(GLUE_TASKS)
    assert canonical_task("SST-2") == "sst2"
    with pytest.raises(DataError, match="'stsb' is not a supported GLUE task"):
        canonical_task("stsb")
