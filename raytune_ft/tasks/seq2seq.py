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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raytune_ft.errors import ConfigError, ModelError
from raytune_ft.tasks import DataBundle, Metric, Task
from raytune_ft.tasks._scores import METRICS_OF, describe, missing_packages
from raytune_ft.training.metrics import WORST_LOSS

if TYPE_CHECKING:
    import torch

    from raytune_ft.config import DataConfig
    from raytune_ft.tasks._parallel import Pairs

log = logging.getLogger(__name__)
IGNORE = -100  # the label of a padding position (torch's cross_entropy default)


@dataclass
class Decoding:
    """What a trial needs to generate and score, carried by the eval split."""

    tokenizer: Any  # decodes generated ids (a fast tokenizer pickles into the object store)
    generation: dict  # generate() keyword arguments: num_beams, max_new_tokens, length_penalty
    scores: list[str]  # bleu, chrf, rouge
    lowercase: bool


@dataclass
class PairSplit:
    """Pair i is source ids[offsets[i]:offsets[i+1]] and target
    target_ids[target_offsets[i]:target_offsets[i+1]] (eos included, as the model predicts)."""

    ids: np.ndarray  # int32 source ids
    offsets: np.ndarray  # int64, n + 1
    target_ids: np.ndarray  # int32
    target_offsets: np.ndarray  # int64, n + 1
    start_id: int  # the decoder's start token (config.decoder_start_token_id)
    references: list[str] = field(default_factory=list)  # eval: the target texts as read
    decoding: Decoding | None = None  # eval only
    sources_cut: int = 0  # sources longer than model.max_length tokens, cut
    targets_cut: int = 0  # targets longer than data.max_target_length tokens, cut
    dropped: str = ""  # what the reader dropped (Pairs.dropped_text)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets) + np.diff(self.target_offsets)

    @property
    def target_lengths(self) -> np.ndarray:
        return np.diff(self.target_offsets)


def _flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((t for row in rows for t in row), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def _tokenize(tokenizer, texts: list[str], limit: int, target: bool) -> tuple[list, int]:
    """Ids of `texts` (special tokens added), cut to `limit` tokens as the tokenizer truncates
    (its end token kept); returns the ids and how many texts were cut."""
    key = "text_target" if target else "text"
    common = dict(padding=False, return_attention_mask=False, return_token_type_ids=False)
    full = tokenizer(**{key: texts}, **common)["input_ids"]
    cut = sum(len(ids) > limit for ids in full)
    if not cut:
        return full, 0
    return tokenizer(**{key: texts}, truncation=True, max_length=limit, **common)["input_ids"], cut


def encode(pairs: Pairs, tokenizer, max_length: int, max_target_length: int, prefix: str,
           start_id: int) -> PairSplit:
    sources, source_cut = _tokenize(tokenizer, [prefix + s for s in pairs.sources], max_length,
                                    target=False)
    targets, target_cut = _tokenize(tokenizer, pairs.targets, max_target_length, target=True)
    ids, offsets = _flat(sources)
    target_ids, target_offsets = _flat(targets)
    return PairSplit(ids, offsets, target_ids, target_offsets, start_id,
                     sources_cut=source_cut, targets_cut=target_cut,
                     dropped=pairs.dropped_text())


def collate(split: PairSplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """Sources padded to the longest of the batch, labels to the longest target (IGNORE), and
    the decoder's input: the labels shifted right behind the start token."""
    import torch

    begin, end = split.offsets[indices], split.offsets[indices + 1]
    t_begin, t_end = split.target_offsets[indices], split.target_offsets[indices + 1]
    rows, width, t_width = len(indices), int((end - begin).max()), int((t_end - t_begin).max())
    ids = np.full((rows, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    labels = np.full((rows, t_width), IGNORE, dtype=np.int64)
    for row, (a, b, c, d) in enumerate(zip(begin, end, t_begin, t_end)):
        ids[row, :b - a], mask[row, :b - a] = split.ids[a:b], 1
        labels[row, :d - c] = split.target_ids[c:d]
    decoder = np.full((rows, t_width), pad_token_id, dtype=np.int64)
    decoder[:, 0] = split.start_id
    decoder[:, 1:] = np.where(labels[:, :-1] == IGNORE, pad_token_id, labels[:, :-1])
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "decoder_input_ids": torch.from_numpy(decoder), "labels": torch.from_numpy(labels)}


def generated_lengths(sequences: np.ndarray, pad_token_id: int, eos_token_id: int | None
                      ) -> np.ndarray:
    """Tokens each generated row holds after the decoder start: up to and including its first
    eos, padding after it not counted (what `eval_gen_len` averages)."""
    body = sequences[:, 1:]
    if eos_token_id is None:
        return (body != pad_token_id).sum(axis=1)
    is_eos = body == eos_token_id
    first = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, body.shape[1])
    return first.astype(np.int64)


def decoder_start(path: str) -> int:
    """The decoder's start token id of the model at `path` (config or generation config)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"model.name: cannot read the config of {path!r}: {error}") from None
    if not getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"model.name: {path} is a {type(config).__name__} "
                         f"({config.model_type}), not an encoder-decoder; data.kind seq2seq "
                         "needs an AutoModelForSeq2SeqLM model (T5, BART, Marian, mT5) or "
                         "model.decoder_name to warm-start one from two encoders")
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        try:
            start = GenerationConfig.from_pretrained(path).decoder_start_token_id
        except (OSError, ValueError):
            start = None
    if start is None:
        raise ModelError(f"model.name: {path} sets no decoder_start_token_id (config.json or "
                         "generation_config.json); the decoder cannot start")
    return int(start)


class Seq2Seq(Task):
    name = "seq2seq"
    primary_metric = "eval_bleu"
    metrics = (Metric("eval_bleu", "max", 0.0), Metric("eval_chrf", "max", 0.0),
               Metric("eval_rouge1", "max", 0.0), Metric("eval_rouge2", "max", 0.0),
               Metric("eval_rougeL", "max", 0.0),
               # informational: shorter is not better, but every metric declares a direction
               Metric("eval_gen_len", "min", WORST_LOSS))
    data_fields = ("source_lang", "target_lang", "source_column", "target_column",
                   "source_prefix", "max_target_length", "metrics", "lowercase",
                   "drop_bad_pairs", "eval_subset", "generation")
    file_pairs = True
    pipeline_tag = "text2text-generation"  # the Hub's tag for translation and summarisation
    auto_class = "AutoModelForSeq2SeqLM"

    # ------------------------------------------------------------------ driver

    def check_data(self, data: DataConfig) -> None:
        if data.task is not None or data.train_file is None:
            raise ValueError("data.train_file is required with data.kind seq2seq (parallel "
                             "text files, or a JSONL/Parquet table of pairs)")
        if data.label_column is not None:
            raise ValueError("data.label_column: not read by data.kind seq2seq; use "
                             "data.source_column and data.target_column")
        if (data.source_lang is None) != (data.target_lang is None):
            raise ValueError("data.source_lang and data.target_lang: give both or neither")
        if data.source_lang is not None and data.source_lang == data.target_lang:
            raise ValueError(f"data.target_lang: {data.target_lang!r} is also the source "
                             "language; the two files would be one")
        missing = missing_packages(data.metrics)
        if missing:
            raise ValueError(f"data.metrics: {', '.join(data.metrics)} need(s) "
                             f"{', '.join(missing)}: pip install 'raytune-ft[seq2seq]'")

    def load_data(self, data: DataConfig, model_path: str, max_length: int) -> DataBundle:
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

    def warnings(self, bundle: DataBundle, data: DataConfig) -> list[str]:
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

    def check_metric(self, metric: str, bundle: DataBundle, data: DataConfig) -> None:
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

    def loss(self, outputs: torch.Tensor, batch: dict, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        """Cross-entropy summed over the target tokens (smoothing on training steps)."""
        from raytune_ft.tasks import summed_cross_entropy

        return summed_cross_entropy(outputs.flatten(0, 1), batch["labels"].flatten(),
                                    label_smoothing, ignore_index=IGNORE)

    def loss_units(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

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
        generation = config.data.generation
        model.generation_config.num_beams = generation.final_num_beams or generation.num_beams
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
            except Exception:  # noqa: BLE001 - the card keeps its stock sentence
                log.warning("the eval file cannot be read for the card; a stock sentence")
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
