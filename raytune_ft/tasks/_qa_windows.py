"""Questions as windows of token ids: the driver's one-time encoding for question answering.

Each question is tokenized with its context by the model's fast tokenizer, question first,
context cut into overlapping windows of at most `model.max_length` tokens (`truncation=
"only_second"`, `return_overflowing_tokens`, `stride=data.doc_stride`: the number of context
tokens consecutive windows share, as in Hugging Face's tokenizers and pipeline). The
character offsets of every token (`return_offsets_mapping`) map a window's span back to the
characters of the original context. A window that holds the whole (first) answer is labelled
with its first and last token; any other window, and every window of an unanswerable
question, points at the classifier token (position 0). An answer that no window holds whole
(longer than the overlap) is lost to truncation and counted; an evaluation question with
several gold answers is lost only when no window holds any of them.

A sample is a window: the arrays are flat (window i is ids[offsets[i]:offsets[i + 1]]), the
windows of a question are consecutive (question q's are question_windows[q]:...[q + 1]), and
nothing is padded (`collate` pads per batch). Questions are never truncated: one that leaves
a window no more context than the stride is refused with its id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from raytune_ft.errors import DataError, ModelError
from raytune_ft.tasks._base import ragged
from raytune_ft.tasks._squad import Questions


@dataclass(frozen=True)
class Decoding:
    """How evaluation turns window logits into answers (data.n_best, ...)."""

    n_best: int  # start and end candidates kept per window
    max_answer_length: int  # tokens
    null_score_threshold: float  # the empty answer wins by more than this (SQuAD 2.0)
    null_answers: bool  # training holds unanswerable questions: the empty answer is allowed


@dataclass
class QASplit:
    """A split's windows as flat arrays, and what scoring needs per question."""

    ids: np.ndarray  # int32 token ids of every window, end to end
    type_ids: np.ndarray | None  # int8 segment ids; None for models without them
    offsets: np.ndarray  # int64, windows + 1
    start_positions: np.ndarray  # int32 per window: the answer's first token, 0 without it
    end_positions: np.ndarray  # int32 per window: its last token, 0 without it
    context_span: np.ndarray  # int32 (windows, 2): first and last context token (-1: none)
    question_windows: np.ndarray  # int64, questions + 1
    has_answer: np.ndarray  # bool per question
    max_length: int
    doc_stride: int
    answers_lost: int = 0  # answerable questions no window holds any answer of whole
    # evaluation only (None for training): offsets of every token in its context, the
    # contexts, and each question's id and normalised gold answers
    char_starts: np.ndarray | None = None  # int32 per token
    char_ends: np.ndarray | None = None
    question_ids: list[str] | None = None
    contexts: list[str] | None = None
    context_of: np.ndarray | None = None  # int32 per question
    golds: list[list[str]] | None = None
    decoding: Decoding | None = field(default=None)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def source_examples(self) -> int:
        """Questions: a search over the windowing must keep the same ones."""
        return len(self.question_windows) - 1


def qa_tokenizer(model_path: str):
    """The model's fast tokenizer: only a fast one gives character offsets."""
    from raytune_ft.training.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    if not tokenizer.is_fast:
        raise ModelError(f"model.name: the tokenizer of {model_path} is a slow (Python) one; "
                         "question answering needs a fast tokenizer (tokenizer.json) for the "
                         "character offsets of its tokens")
    return tokenizer


def check_room(questions: Questions, texts: list[str], tokenizer, max_length: int,
               doc_stride: int) -> None:
    """Every question must leave a window more context tokens than the stride (else the
    windows could not advance); such a question is refused, never truncated."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    sizes = np.fromiter((len(ids) for ids in tokenizer(texts, add_special_tokens=False)[
        "input_ids"]), dtype=np.int64, count=len(texts))
    room = max_length - specials - sizes
    bad = np.flatnonzero(room <= doc_stride)
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size - 1} more questions too)" if bad.size > 1 else ""
        raise DataError(f"{questions.where}: {questions.path} question {questions.ids[i]}: the "
                        f"question takes {sizes[i]} tokens, leaving a window of model.max_length "
                        f"{max_length} room for {max(room[i], 0)} context tokens, which must be "
                        f"more than data.doc_stride {doc_stride}{more}; questions are not "
                        "truncated: shorten it, raise model.max_length or lower data.doc_stride")


def encode(questions: Questions, tokenizer, max_length: int, doc_stride: int,
           decoding: Decoding | None = None) -> QASplit:
    """Windows of every question (module docstring); `decoding` (evaluation) keeps what
    scoring needs: character offsets, contexts, ids and gold answers."""
    texts = [q.lstrip() for q in questions.questions]  # leading blanks only cost room
    check_room(questions, texts, tokenizer, max_length, doc_stride)
    encoded = tokenizer(texts, [questions.context(i) for i in range(len(questions))],
                        truncation="only_second", max_length=max_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding=False, return_attention_mask=False)
    rows = encoded["input_ids"]
    ids, offsets = ragged(rows)
    total = int(offsets[-1])
    _check_classifier_first(ids, offsets, tokenizer)
    type_ids = None
    if "token_type_ids" in encoded:
        type_ids = np.fromiter(chain.from_iterable(encoded["token_type_ids"]), dtype=np.int8,
                               count=total)
    chars = np.fromiter(chain.from_iterable(chain.from_iterable(encoded["offset_mapping"])),
                        dtype=np.int32, count=2 * total).reshape(total, 2)
    segment = np.fromiter((-1 if s is None else s for i in range(len(rows))
                           for s in encoded.sequence_ids(i)), dtype=np.int8, count=total)
    owner = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
    span = context_spans(segment, offsets)
    starts, ends, held = label_windows(questions, owner, span, offsets, chars)
    has_answer = questions.has_answer
    lost = int((has_answer & ~np.bincount(owner, weights=held, minlength=len(questions))
                .astype(bool)).sum())
    counts = np.bincount(owner, minlength=len(questions))
    split = QASplit(ids, type_ids, offsets, starts, ends, span,
                    np.concatenate([[0], np.cumsum(counts)]), has_answer, max_length,
                    doc_stride, lost)
    if decoding is not None:
        split.char_starts, split.char_ends = chars[:, 0].copy(), chars[:, 1].copy()
        split.question_ids = list(questions.ids)
        split.contexts = questions.contexts
        split.context_of = np.asarray(questions.context_of, dtype=np.int32)
        split.golds = questions.golds()
        split.decoding = decoding
    return split


def _check_classifier_first(ids: np.ndarray, offsets: np.ndarray, tokenizer) -> None:
    """A window without the answer points at position 0: it must be the classifier token
    (BERT's [CLS], RoBERTa's <s>), the same special token in every window."""
    first = ids[offsets[:-1]]
    if len(first) and not (np.all(first == first[0]) and int(first[0]) in
                           tokenizer.all_special_ids):
        raise ModelError("model.name: its tokenizer does not put a classifier token first in "
                         "every window (question answering points unanswerable windows at "
                         "position 0)")


def context_spans(segment: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(first, last) context-token position of each window, within the window; (-1, -1)
    for a window without context tokens (a context the tokenizer maps to nothing)."""
    span = np.full((len(offsets) - 1, 2), -1, dtype=np.int32)
    positions = np.flatnonzero(segment == 1)
    if not len(positions):
        return span
    window = np.searchsorted(offsets, positions, side="right") - 1
    found, first = np.unique(window, return_index=True)
    last = len(window) - 1 - np.unique(window[::-1], return_index=True)[1]
    span[found, 0] = positions[first] - offsets[found]
    span[found, 1] = positions[last] - offsets[found]
    return span


def label_windows(questions: Questions, owner: np.ndarray, span: np.ndarray,
                  offsets: np.ndarray, chars: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: the first and last token of its question's first answer when the window
    holds all of it (else 0, 0: the classifier token, as in Hugging Face's recipe), and
    whether it holds any of its gold answers whole (an evaluation question has several: it
    can be answered as long as one of them fits a window)."""
    count = len(owner)
    starts, ends = np.zeros(count, np.int32), np.zeros(count, np.int32)
    held = np.zeros(count, dtype=bool)
    for w in range(count):
        answers = questions.answers[owner[w]]
        if not answers or span[w, 0] < 0:
            continue
        a, b = offsets[w] + span[w, 0], offsets[w] + span[w, 1]
        for k, (text, first_char) in enumerate(answers):
            last_char = first_char + len(text)
            if chars[a, 0] > first_char or chars[b, 1] < last_char:
                continue  # it begins before or ends after this window's context
            held[w] = True
            if k == 0:  # the last token starting at or before the answer, the first
                # ending at or after it
                start = a + np.searchsorted(chars[a:b + 1, 0], first_char, side="right") - 1
                end = a + np.searchsorted(chars[a:b + 1, 1], last_char, side="left")
                starts[w], ends[w] = start - offsets[w], end - offsets[w]
            break
    return starts, ends, held


def collate(split: QASplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """The windows at `indices` padded to the longest of them, with their answer positions,
    context spans and (evaluation) the candidates to keep per window."""
    import torch

    begin = split.offsets[indices]
    lengths = split.offsets[indices + 1] - begin
    columns = np.arange(int(lengths.max()))
    mask = columns[None, :] < lengths[:, None]
    where = np.minimum(begin[:, None] + columns[None, :], len(split.ids) - 1)
    batch = {"input_ids": torch.from_numpy(np.where(mask, split.ids[where], pad_token_id)
                                           .astype(np.int64)),
             "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if split.type_ids is not None:
        batch["token_type_ids"] = torch.from_numpy(np.where(mask, split.type_ids[where], 0)
                                                   .astype(np.int64))
    batch["start_positions"] = torch.from_numpy(split.start_positions[indices].astype(np.int64))
    batch["end_positions"] = torch.from_numpy(split.end_positions[indices].astype(np.int64))
    batch["context_span"] = torch.from_numpy(split.context_span[indices].astype(np.int64))
    if split.decoding is not None:
        batch["n_best"] = torch.tensor(split.decoding.n_best)
    return batch
