"""Sequence classification: tokenization once, the metrics it reports, per-batch padding,
its metric values (scikit-learn's, equal to the formulas they replaced), CoLA's default."""

import math

import numpy as np
import pytest

from raytune_ft.errors import DataError
from raytune_ft.schema import data_settings, validate_config
from raytune_ft.tasks.sequence_classification import (
    TokenizedSplit,
    build_bundle,
    classification_metrics,
    collate,
    task_metrics,
)


def test_tokenized_once_without_padding(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = data_settings(task="mrpc", path=str(glue_dir), max_train_samples=50)
    bundle = build_bundle(cfg, tokenizer, max_length=64)
    lengths = bundle.train.lengths
    assert len(bundle.train) == 50 and len(bundle.eval) == 408
    assert lengths.max() <= 64 and lengths.min() < 64  # truncated, never padded
    first = bundle.train.ids[: lengths[0]]
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    assert set(np.unique(bundle.train.type_ids)) == {0, 1}  # sentence pairs
    assert bundle.metrics == ["eval_accuracy", "eval_loss", "eval_mcc", "eval_f1"]


def test_the_schema_and_the_readers_know_the_same_tasks():
    from raytune_ft.tasks import dataset_names
    from raytune_ft.tasks._glue import GLUE_TASKS, canonical_task

    assert set(dataset_names()) == set(GLUE_TASKS)
    assert canonical_task("SST-2") == "sst2"
    with pytest.raises(DataError, match="'stsb' is not a supported GLUE task"):
        canonical_task("stsb")


@pytest.mark.parametrize(("task", "labels", "f1"), [
    ("mrpc", 2, True), ("qqp", 2, True), ("rte", 2, False), ("qnli", 2, False),
    ("sst2", 2, False), ("cola", 2, False), ("mnli", 3, False), (None, 2, True),
    (None, 3, False),
])
def test_f1_only_where_glue_reports_it_and_for_binary_files(task, labels, f1):
    expected = ["eval_accuracy", "eval_loss", "eval_mcc"] + (["eval_f1"] if f1 else [])
    assert task_metrics(task, labels) == expected


def test_sst2_bundle_reports_no_f1(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    cfg = data_settings(task="sst2", path=str(glue_dir), max_train_samples=20, max_eval_samples=20)
    bundle = build_bundle(cfg, AutoTokenizer.from_pretrained(tiny_bert), max_length=32)
    assert bundle.metrics == ["eval_accuracy", "eval_loss", "eval_mcc"]



def test_collate_pads_to_the_longest_in_the_batch_only():
    lengths = np.array([3, 5, 2, 9])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    split = TokenizedSplit(np.arange(1, offsets[-1] + 1, dtype=np.int32),
                           np.ones(offsets[-1], dtype=np.int8), offsets, np.arange(4) % 2)
    batch = collate(split, np.array([0, 2]), pad_token_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 10, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [0, 0]


def formulas_before(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """The hand-written metrics scikit-learn's replaced (raytune_ft 4fbb7f5, loop.py)."""
    accuracy = float((predictions == labels).mean())
    confusion = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1)
    t, p, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    denominator = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    metrics = {"eval_accuracy": accuracy,
               "eval_mcc": float((c * s - t @ p) / denominator) if denominator else 0.0}
    if num_labels == 2:
        tp = int(((predictions == 1) & (labels == 1)).sum())
        fp = int(((predictions == 1) & (labels == 0)).sum())
        fn = int(((predictions == 0) & (labels == 1)).sum())
        metrics["eval_f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return metrics


def _cases():
    rng = np.random.default_rng(0)
    for k, n in [(2, 50), (2, 1000), (3, 200), (5, 999)]:
        for _ in range(5):
            yield k, rng.integers(0, k, n), rng.integers(0, k, n)
        labels = rng.integers(0, k, n)  # a good classifier: mostly right
        yield k, np.where(rng.random(n) < 0.9, labels, rng.integers(0, k, n)), labels
    ones, zeros = np.ones(40, dtype=np.int64), np.zeros(40, dtype=np.int64)
    yield 2, ones, ones  # one class in labels and predictions: MCC undefined, 0.0
    yield 2, zeros, zeros  # ... and no positive at all: F1 0.0
    yield 2, zeros, ones  # never predicts the positive class
    yield 2, ones, zeros  # only false positives
    yield 3, np.full(30, 2), rng.integers(0, 3, 30)  # always one class of three
    yield 3, rng.integers(0, 3, 30), np.full(30, 1)  # labels of one class of three


@pytest.mark.parametrize(("k", "predictions", "labels"), list(_cases()))
def test_sklearn_metrics_equal_the_formulas_they_replaced(k, predictions, labels):
    ours = classification_metrics(predictions, labels, k)
    before = formulas_before(predictions, labels, k)
    assert ours.keys() == before.keys()
    for name, value in before.items():
        assert ours[name] == pytest.approx(value, abs=1e-12, rel=0), name
        assert isinstance(ours[name], float)


def test_degenerate_predictions_score_zero_mcc_and_f1():
    ones = np.ones(10, dtype=np.int64)
    assert classification_metrics(ones, ones, 2) == {"eval_accuracy": 1.0, "eval_mcc": 0.0,
                                                     "eval_f1": 1.0}
    zeros = np.zeros(10, dtype=np.int64)
    assert classification_metrics(zeros, ones, 2) == {"eval_accuracy": 0.0, "eval_mcc": 0.0,
                                                      "eval_f1": 0.0}


def test_the_task_declares_what_it_reports():
    from raytune_ft.tasks import get_task

    task = get_task("sequence_classification")
    assert [m.name for m in task.metrics] == ["eval_accuracy", "eval_f1", "eval_mcc"]
    assert {m.name: (m.mode, m.worst) for m in task.metrics} == {
        "eval_accuracy": ("max", 0.0), "eval_f1": ("max", 0.0), "eval_mcc": ("max", -1.0)}
    assert task.worst("eval_loss") == task.worst("train_loss") == 1e9


# --------------------------------------------- the default metric (was tests/test_task_metrics.py)


def _experiment(task: str, **extra) -> dict:
    return {"name": "t", "model": {"name": "all-MiniLM-L6-v2"}, "data": {"task": task}, **extra}


@pytest.mark.parametrize("task", ["cola", "CoLA"])
def test_cola_defaults_to_matthews_correlation(task):
    assert validate_config(_experiment(task)).metric == "eval_mcc"


def test_an_explicit_metric_stays_as_set():
    config = validate_config(_experiment("cola", metric="eval_accuracy"))
    assert config.metric == "eval_accuracy" and config.mode == "max"
    assert validate_config(_experiment("cola", metric="eval_loss", mode="min")).metric == \
        "eval_loss"


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_other_tasks_keep_accuracy(task):
    assert validate_config(_experiment(task)).metric == "eval_accuracy"


def test_a_data_model_instance_is_read_too():
    from raytune_ft.config import ModelConfig
    from raytune_ft.schema import ExperimentConfig

    config = ExperimentConfig(name="t", model=ModelConfig(name="m"),
                              data=data_settings(task="cola"))
    assert config.metric == "eval_mcc"
