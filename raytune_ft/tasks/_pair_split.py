"""Pairs encoded for training and generation: ragged flat arrays of source and target ids
(`PairSplit`), what a trial needs to generate and score (`Decoding`), the teacher-forced
batch (`collate`: the decoder reads the target shifted right behind its start token), and
the generated lengths `eval_gen_len` averages. No torch at import (inside functions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raytune_ft.errors import ModelError
from raytune_ft.tasks._base import IGNORE, ragged

if TYPE_CHECKING:
    from raytune_ft.tasks._parallel import Pairs



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
    ids, offsets = ragged(sources)
    target_ids, target_offsets = ragged(targets)
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
