"""The task interface: what one kind of problem gives the loop and the tuner (`Task`), what
the driver hands every trial (`DataBundle`), and the metrics a task declares (`Metric`).

A task reads its splits and encodes them once in the driver into flat numpy arrays (the
`DataBundle` Ray's object store shares with every trial), collates a batch of sample indices,
builds its model, computes its loss summed over its units (examples, or labelled tokens),
turns evaluation outputs into its metrics (each with its direction and worst value), and says
what an exported model card shows. Its `data:` section is its own settings class
(`settings`), assembled into the experiment by the schema.

Task modules import torch, transformers, pandas and scikit-learn inside their methods, never at
the top: the schema reads the registry for settings, dataset and metric names.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from raytune_ft.config import DataSettings
from raytune_ft.errors import ConfigError
from raytune_ft.training.batching import Split
from raytune_ft.training.metrics import WORST_LOSS

if TYPE_CHECKING:
    import numpy as np
    import torch

IGNORE = -100  # the label of a position the loss skips (torch's cross_entropy default)


@dataclass(frozen=True)
class Metric:
    """An `eval_` metric a task reports: which way is better, and its worst finite value,
    which a diverged trial reports in its place so schedulers keep ranking it."""

    name: str
    mode: Literal["max", "min"]
    worst: float


@dataclass
class DataBundle:
    """What the driver hands every trial through the object store."""

    train: Split
    eval: Split
    label_names: list[str]
    pad_token_id: int  # what text tasks pad token ids with (unused by others)
    task: str  # the data's name: GLUE task or the train file's name
    metrics: list[str]  # what a trial reports for this data (eval_loss included), in order
    kind: str  # the TASKS key of the task that encoded it and trains on it


class Task(abc.ABC):
    """One kind of problem. The loop calls, per micro-batch: `collate` (on the host),
    `forward` (under autocast), `loss` (summed over the micro-batch, in fp32, so gradient
    accumulation stays exact); per evaluation: `predict` on every eval batch, then
    `compute_metrics` once."""

    name: ClassVar[str]  # its TASKS key (and its settings' `kind`)
    metrics: ClassVar[tuple[Metric, ...]]  # every eval metric it can report, but eval_loss
    datasets: ClassVar[tuple[str, ...]] = ()  # lowercase names `data.task` may give
    aliases: ClassVar[dict[str, str]] = {}  # other spellings of those names
    default_metric: ClassVar[dict[str, str]] = {}  # dataset -> metric tuned without `metric:`
    primary_metric: ClassVar[str] = "eval_accuracy"  # tuned without `metric:` (user's files)
    settings: ClassVar[type[DataSettings]]  # its `data:` section: its fields and validators
    example: ClassVar[dict[str, Any]]  # a `data:` section that validates (contract tests)
    # Its settings the encoding depends on: searchable as `data.<field>` with listed values,
    # like model.max_length (the driver encodes the data once per value).
    tokenization_fields: ClassVar[tuple[str, ...]] = ()
    pipeline_tag: ClassVar[str]  # the exported model card's Hub pipeline
    auto_class: ClassVar[str]  # the transformers Auto class that loads the exported model
    # It trains an encoder-decoder, so `model.decoder_name` (an encoder and a decoder
    # warm-started into one) is read.
    encoder_decoder: ClassVar[bool] = False
    # What a sample is where it is a part of an example (question answering: "windows" of a
    # question's context); None: a sample is an example.
    samples_are: ClassVar[str | None] = None

    # ------------------------------------------------------------------ driver

    @abc.abstractmethod
    def load_data(self, data: DataSettings, model_path: str, max_length: int) -> DataBundle:
        """Read, subset and encode both splits once; `metrics` holds what a trial reports."""

    def describe(self, bundle: DataBundle) -> list[tuple[str, str]]:
        """(name, text) lines the run header shows about this data (e.g. the labels)."""
        return []

    def warnings(self, bundle: DataBundle, data: DataSettings) -> list[str]:
        """What makes this data unlike what the settings suggest (the run header says so)."""
        return []

    def check_encoding(self, data: DataSettings, max_length: int) -> None:
        """Refuse `data` settings that cannot encode at `max_length`, at validation (called
        for every max_length and `tokenization_fields` value a trial can use): raise
        ValueError with a one-line message starting with the `data.` field."""
        return None

    def check_metric(self, metric: str, bundle: DataBundle, data: DataSettings) -> None:
        """Refuse an experiment metric this data never reports, before Ray starts."""
        if metric.startswith("eval_") and metric not in bundle.metrics:
            raise ConfigError(f"metric: {metric!r} is not reported for {bundle.task}; "
                              f"reported: {', '.join(bundle.metrics)}")

    # ------------------------------------------------------------------ trial

    @abc.abstractmethod
    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        """The pretrained body with a head for `label_names`: fresh from `seed`, or the
        folder's own with its rows mapped by label name where its labels are these."""

    @abc.abstractmethod
    def collate(self, data: DataBundle, split: Split, indices: np.ndarray
                ) -> dict[str, torch.Tensor]:
        """The examples at `indices` as host tensors, padded per batch; targets included."""

    @abc.abstractmethod
    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The model's outputs for a collated batch (on the device)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
             ) -> torch.Tensor:
        """The batch's loss summed over its loss units (not a mean), as an fp32 scalar; the
        loop passes `train.label_smoothing` on training steps and 0.0 at evaluation."""

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """What `loss` sums over in a collated batch: its examples (a tagging task: its
        labelled tokens). A step divides the summed loss of all its micro-batches by their
        units, so accumulation gives the whole batch's gradient however units fall."""
        return len(next(iter(batch.values())))

    def predict(self, outputs: Any, batch: dict[str, torch.Tensor]) -> Any:
        """What `compute_metrics` needs of one eval batch, on the host. A task defines this
        or `predict_model`."""
        raise NotImplementedError(f"{type(self).__name__} defines neither predict nor "
                                  "predict_model")

    def predict_model(self, model: torch.nn.Module, outputs: Any,
                      batch: dict[str, torch.Tensor], data: DataBundle) -> Any:
        """What the loop calls per eval batch (and the latency figures time after `forward`):
        `predict(outputs, batch)`, unless a task's predictions need the model itself or its
        data, e.g. a generating task decodes with `model.generate`."""
        return self.predict(outputs, batch)

    @abc.abstractmethod
    def compute_metrics(self, data: DataBundle, predictions: list[tuple[np.ndarray, Any]]
                        ) -> dict[str, float]:
        """The eval metrics from (indices, `predict` output) of every eval batch."""

    def worst(self, metric: str) -> float:
        """The worst finite value of a reported metric (losses: `WORST_LOSS`)."""
        return next((m.worst for m in self.metrics if m.name == metric), WORST_LOSS)

    # ------------------------------------------------------------------ export

    @abc.abstractmethod
    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        """Write the tokenizer (or image processor) the exported model is used with."""

    def prepare_export(self, model: torch.nn.Module, config: Any) -> None:
        """Settings of the experiment the exported model keeps (a generating task: how it
        generates), set on the model before it is saved; by default none."""
        return None

    def card_input(self, config: Any) -> list[str]:
        """The model card's Data lines about the model's input (text: its max length)."""
        return [f"- max length: {config.model.max_length} tokens"]

    @abc.abstractmethod
    def usage(self) -> list[str]:
        """Python lines that load the exported folder, for its model card."""

    def card_usage(self, config: Any) -> list[str]:
        """The card's usage lines for the experiment `config` (e.g. run on an example of its
        own eval file); by default `usage()`."""
        return self.usage()


def subset_indices(count: int, size: int | None, seed: int) -> np.ndarray | None:
    """The sorted indices of a fixed random subset of `size` of `count` examples
    (data.max_train_samples / max_eval_samples): the same in every trial and every run for
    a seed. None where the subset is everything."""
    import numpy as np

    if size is None or size >= count:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def ragged(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids as one flat int32 array and the offsets of the rows (row i is
    flat[offsets[i]:offsets[i + 1]]): how every task keeps its encoded data, unpadded."""
    from itertools import chain

    import numpy as np

    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def example_count(split: Split) -> int:
    """The examples a split was encoded from: its samples, unless its samples are parts of
    examples (question answering: a question's context in windows) and it says how many
    (`source_examples`); a search over the encoding must keep the same ones."""
    return int(getattr(split, "source_examples", len(split)))


class PositionLoss:
    """`loss` and `loss_units` of a task whose labels are one per position (a tag, a target
    token), `IGNORE` where the loss skips one: cross-entropy summed over the labelled
    positions, and their count, so a step's gradient is the mean over the whole batch's
    labelled positions however they fall into micro-batches. Listed before `Task`."""

    def loss(self, outputs: torch.Tensor, batch: dict, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        return summed_cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten(),
                                    label_smoothing, ignore_index=IGNORE)

    def loss_units(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())


def label_list(names: list[str], shown: int = 20) -> str:
    """"0 -> 'neg', 1 -> 'pos'" for the run header, the first `shown` labels."""
    text = ", ".join(f"{i} -> {name!r}" for i, name in enumerate(names[:shown]))
    return text + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         label_smoothing: float = 0.0, **kwargs) -> torch.Tensor:
    """Cross-entropy summed over examples (or positions), in fp32: what `Task.loss` returns
    for a classification head."""
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum",
                                             label_smoothing=label_smoothing, **kwargs)
