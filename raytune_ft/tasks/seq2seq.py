"""Sequence to sequence: translation and summarisation with an encoder-decoder model.

The driver reads the pairs (`_parallel`: parallel text files, tables, the Hugging Face
translation layout) and tokenizes each split once into ragged flat arrays: source ids
(`model.max_length` tokens at most) and target ids (`data.max_target_length` at most), nothing
padded. A sample is a pair; its length for batching is its source plus target tokens.

Training is teacher-forced: the decoder reads the target shifted right behind the model's
decoder start token and the loss is cross-entropy summed over the target tokens (padding
ignored); `loss_units` is their count, so accumulation and data-parallel shares give the big
batch's gradient. Evaluation computes that loss (`eval_loss`, cheap: one pass) and generates
(`data.generation`: greedy unless `num_beams` says otherwise; `final_num_beams` for confirm and
export), then scores the decoded text against the references as read from the file (never
against detokenized ids) with sacreBLEU and rouge-score (`_scores`). Under data-parallel
workers every rank generates for its deal of the eval batches and the texts are gathered.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from raytune_ft.config import DataSettings, Strict
from raytune_ft.errors import ConfigError, ModelError, RaytuneFtError
from raytune_ft.tasks._base import DataBundle, Metric, PositionLoss, Task
from raytune_ft.tasks._pair_split import (
    Decoding,
    PairSplit,
    collate,
    decoder_start,
    encode,
    generated_lengths,
)
from raytune_ft.tasks._scores import METRICS_OF, describe, missing_packages
from raytune_ft.training.metrics import WORST_LOSS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class ParallelFiles(Strict):
    """Two line-aligned text files: line i of `target` translates line i of `source`."""

    source: str
    target: str


class GenerationSettings(Strict):
    """How the model generates at evaluation: greedy by default while searching, beam
    search for confirm runs and export where `final_num_beams` says so."""

    num_beams: int = Field(1, gt=0)  # 1: greedy, the cheap default while searching
    max_new_tokens: int = Field(128, gt=0)  # generated tokens per example at most
    length_penalty: float = 1.0  # beam search ranks by score / length^this (> 1: longer)
    final_num_beams: int | None = Field(None, gt=0)  # confirm runs and export; None: num_beams


class Seq2SeqData(DataSettings):
    """Pairs of texts (translation, summarisation). train_file and eval_file: `{source: ...,
    target: ...}` text files (one sentence per line, aligned), a stem whose suffixes are the
    languages (`train` -> train.de + train.en), or a table (JSONL/JSON/Parquet/CSV/TSV) with
    source and target columns or the Hugging Face `translation: {de: ..., en: ...}` column."""

    kind: Literal["seq2seq"] = "seq2seq"
    # {source: ..., target: ...} text files, a stem + the language suffixes, or a table
    train_file: str | ParallelFiles | None = None
    eval_file: str | ParallelFiles | None = None  # the same layouts as train_file
    source_lang: str | None = None  # text files' suffix, the translation column's key
    target_lang: str | None = None  # the other suffix / key (both or neither)
    source_column: str | None = None  # table: default "source"
    target_column: str | None = None  # table: default "target"
    source_prefix: str = ""  # before every source (T5: "translate German to English: ")
    max_target_length: int = Field(128, gt=0)  # target tokens after truncation (eos counted)
    # what a trial scores (sacreBLEU BLEU and chrF; ROUGE-1/2/L for summarisation: [rouge])
    metrics: list[Literal["bleu", "chrf", "rouge"]] = Field(
        default_factory=lambda: ["bleu", "chrf"], min_length=1)
    lowercase: bool = False  # sacreBLEU BLEU and chrF case-insensitive (-lc)
    drop_bad_pairs: bool = True  # drop and count pairs with an empty or markup-only side
    eval_subset: Literal["random", "first"] = "random"  # max_eval_samples: seeded or first n
    generation: GenerationSettings = GenerationSettings()  # greedy while searching

    @property
    def source(self) -> str:
        return str(getattr(self.train_file, "source", self.train_file))

    @model_validator(mode="after")
    def _pairs(self) -> Seq2SeqData:
        if self.train_file is None:
            raise ValueError("data.train_file is required with data.kind seq2seq (parallel "
                             "text files, or a JSONL/Parquet table of pairs)")
        if (self.source_lang is None) != (self.target_lang is None):
            raise ValueError("data.source_lang and data.target_lang: give both or neither")
        if self.source_lang is not None and self.source_lang == self.target_lang:
            raise ValueError(f"data.target_lang: {self.target_lang!r} is also the source "
                             "language; the two files would be one")
        missing = missing_packages(self.metrics)
        if missing:
            raise ValueError(f"data.metrics: {', '.join(self.metrics)} need(s) "
                             f"{', '.join(missing)}: pip install 'raytune-ft[seq2seq]'")
        return self

    def for_final_model(self) -> Seq2SeqData:
        """These settings as confirm runs and export use them: `generation.final_num_beams`
        in force (beam search for the final figure, greedy while searching)."""
        final = self.generation.final_num_beams
        if final is None or final == self.generation.num_beams:
            return self
        generation = self.generation.model_copy(update={"num_beams": final})
        return self.model_copy(update={"generation": generation})


class Seq2Seq(PositionLoss, Task):
    name = "seq2seq"
    primary_metric = "eval_bleu"
    settings = Seq2SeqData
    example = {"kind": "seq2seq", "train_file": {"source": "train.de", "target": "train.en"},
               "eval_file": "val", "source_lang": "de", "target_lang": "en"}
    metrics = (Metric("eval_bleu", "max", 0.0), Metric("eval_chrf", "max", 0.0),
               Metric("eval_rouge1", "max", 0.0), Metric("eval_rouge2", "max", 0.0),
               Metric("eval_rougeL", "max", 0.0),
               # informational: shorter is not better, but every metric declares a direction
               Metric("eval_gen_len", "min", WORST_LOSS))
    pipeline_tag = "text2text-generation"  # the Hub's tag for translation and summarisation
    auto_class = "AutoModelForSeq2SeqLM"
    encoder_decoder = True

    # ------------------------------------------------------------------ driver

    def load_data(self, data: Seq2SeqData, model_path: str, max_length: int) -> DataBundle:
        from raytune_ft.tasks._parallel import read_pairs, subset
        from raytune_ft.training.model import check_tokenizer, load_tokenizer

        start_id = decoder_start(model_path)
        tokenizer = load_tokenizer(model_path)
        train = subset(read_pairs(data.train_file, data, "data.train_file"),
                       data.max_train_samples, data.subset_seed)
        dev = subset(read_pairs(data.eval_file, data, "data.eval_file"),
                     data.max_eval_samples, data.subset_seed, first=data.eval_subset == "first")
        log.info("tokenizing %d train and %d eval pairs", len(train), len(dev))
        splits = [encode(pairs, tokenizer, max_length, data.max_target_length,
                         data.source_prefix, start_id) for pairs in (train, dev)]
        check_tokenizer(tokenizer, model_path, splits[0])
        splits[1].references = list(dev.targets)
        generation = data.generation
        settings = {"num_beams": generation.num_beams,
                    "max_new_tokens": generation.max_new_tokens}
        if generation.num_beams > 1:  # greedy search has no length penalty (it would warn)
            settings["length_penalty"] = generation.length_penalty
        splits[1].decoding = Decoding(tokenizer, settings, list(data.metrics), data.lowercase)
        metrics = ["eval_loss", *(m for s in data.metrics for m in METRICS_OF[s]),
                   "eval_gen_len"]
        pad = tokenizer.pad_token_id
        if pad is None:
            raise ModelError(f"model.name: the tokenizer of {model_path} has no pad token; "
                             "batches of pairs need one")
        return DataBundle(*splits, [], int(pad), data_name(data.train_file), metrics, self.name)

    def describe(self, bundle: DataBundle) -> list[tuple[str, str]]:
        train, dev = bundle.train, bundle.eval
        decoding = dev.decoding
        generation = decoding.generation
        how = ("greedy" if generation["num_beams"] == 1 else
               f"beam search, {generation['num_beams']} beams, length penalty "
               f"{generation.get('length_penalty', 1.0):g}")
        tokens = [f"{name} {int(np.diff(s.offsets).sum())} source and "
                  f"{int(s.target_lengths.sum())} target tokens"
                  for name, s in (("train", train), ("eval", dev))]
        lines = [("pairs", "; ".join(tokens)),
                 ("generation", f"{how}, at most {generation['max_new_tokens']} new tokens"),
                 ("scores", describe(decoding.scores, decoding.lowercase))]
        for name, split in (("train", train), ("eval", dev)):
            if split.dropped:
                lines.append((f"{name} read", split.dropped))
        return lines

    def warnings(self, bundle: DataBundle, data: Seq2SeqData) -> list[str]:
        out = []
        for name, split in (("train", bundle.train), ("eval", bundle.eval)):
            if split.sources_cut:
                out.append(f"{split.sources_cut} {name} source(s) are longer than "
                           f"model.max_length {int(np.diff(split.offsets).max())} tokens: cut")
            if split.targets_cut:
                out.append(f"{split.targets_cut} {name} target(s) are longer than "
                           f"data.max_target_length {int(split.target_lengths.max())} tokens:"
                           " cut (eval: the loss sees the cut target, the scores the whole "
                           "reference)")
        return out

    def check_metric(self, metric: str, bundle: DataBundle, data: Seq2SeqData) -> None:
        if metric.startswith("eval_") and metric not in bundle.metrics:
            raise ConfigError(f"metric: {metric!r} is not reported with data.metrics "
                              f"{data.metrics}; reported: {', '.join(bundle.metrics)}")

    # ------------------------------------------------------------------ trial

    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        from raytune_ft.training.model import load_pretrained

        return load_pretrained(self.auto_class, path, seed)

    def collate(self, data: DataBundle, split: PairSplit, indices: np.ndarray) -> dict:
        return collate(split, indices, data.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits

    def predict_model(self, model: torch.nn.Module, outputs: Any, batch: dict,
                      data: DataBundle) -> tuple[list[str], np.ndarray]:
        """Generate for the batch's sources; the decoded texts and generated lengths."""
        decoding: Decoding = data.eval.decoding
        sequences = model.generate(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"],
                                   do_sample=False, **decoding.generation)
        sequences = sequences.cpu().numpy()
        texts = decoding.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        lengths = generated_lengths(sequences, data.pad_token_id,
                                    decoding.tokenizer.eos_token_id)
        return [text.strip() for text in texts], lengths

    def compute_metrics(self, data: DataBundle,
                        predictions: list[tuple[np.ndarray, tuple[list[str], np.ndarray]]]
                        ) -> dict[str, float]:
        from raytune_ft.tasks._scores import corpus_scores

        split: PairSplit = data.eval
        hypotheses = [""] * len(split)
        lengths = np.zeros(len(split), dtype=np.int64)
        for indices, (texts, generated) in predictions:
            for i, text in zip(indices, texts):
                hypotheses[i] = text
            lengths[indices] = generated
        decoding = split.decoding
        scores = corpus_scores(hypotheses, split.references, decoding.scores, decoding.lowercase)
        return {**scores, "eval_gen_len": float(lengths.mean()) if len(lengths) else 0.0}

    # ------------------------------------------------------------------ export

    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        from raytune_ft.training.model import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        tokenizer.model_max_length = max_length  # truncation=True cuts as in training
        tokenizer.save_pretrained(out)

    def prepare_export(self, model: torch.nn.Module, config: Any) -> None:
        """The exported model generates as the run scored it (confirm's beams where set)."""
        generation = config.data.for_final_model().generation  # as confirm runs generate
        model.generation_config.num_beams = generation.num_beams
        model.generation_config.max_new_tokens = generation.max_new_tokens
        model.generation_config.length_penalty = generation.length_penalty

    def card_input(self, config: Any) -> list[str]:
        data = config.data
        languages = (f"- languages: {data.source_lang} -> {data.target_lang}"
                     if data.source_lang else "- source -> target pairs")
        prefix = [f"- source prefix: `{data.source_prefix}`"] if data.source_prefix else []
        return [languages, f"- max length: {config.model.max_length} source tokens, "
                f"{data.max_target_length} target tokens", *prefix]

    def usage(self) -> list[str]:
        return self.card_usage(None)

    def card_usage(self, config: Any) -> list[str]:
        """Load with the Auto classes and translate a sentence of the eval file. The
        translation / text2text-generation pipelines were removed in transformers 5: the
        model generates itself, as its generation_config.json says (the tuned beams)."""
        sentence, prefix = "Ein Mann fährt Fahrrad.", ""
        if config is not None:
            from raytune_ft.tasks._parallel import read_pairs

            try:
                sentence = read_pairs(config.data.eval_file, config.data, "data.eval_file"
                                      ).sources[0]
            except (RaytuneFtError, OSError, ValueError) as error:  # the export goes on
                log.warning("the card's example is a stock sentence: the eval file cannot "
                            "be read (%s)", error)
            prefix = config.data.source_prefix
        return [f"from transformers import {self.auto_class}, AutoTokenizer", "",
                f'model = {self.auto_class}.from_pretrained("<this folder>")',
                'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
                "# the first source sentence of the eval file" + (
                    " behind the source prefix, as in training" if prefix else ""),
                f"source = {prefix + sentence!r}",
                'encoded = tokenizer(source, truncation=True, return_tensors="pt")',
                "generated = model.generate(**encoded)  # as generation_config.json says",
                "translated = tokenizer.decode(generated[0], skip_special_tokens=True)",
                "print(translated)"]


def data_name(train_file: Any) -> str:
    """What the header and card call the data: the stem of the (source) training file, or
    its folder's name when the file is just `train` (Multi30K's `translation/train`)."""
    path = Path(str(getattr(train_file, "source", None) or train_file)).expanduser()
    stem = path.name.split(".")[0]
    if stem.lower() in ("train", "training") and path.resolve().parent.name:
        return path.resolve().parent.name
    return stem


TASK = Seq2Seq()
