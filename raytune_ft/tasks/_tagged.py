"""The encoded form of tagged sentences (`token_classification`'s arrays): a split as flat
numpy arrays, its encoding with the model's fast tokenizer (training: one window per sentence,
cut at max_length; evaluation: overlapping windows, each word scored once, where it has the
most context), and the collation of a batch of sentences into padded rows of windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raytune_ft.errors import ConfigError
from raytune_ft.tasks._base import IGNORE
from raytune_ft.tasks._conll import TaggedSentences

UNSCORED = -1  # the prediction of a word no window predicts: wrong (O for entity scores)


@dataclass
class TaggedSplit:
    """A split as flat arrays. Sentence i is read in windows windows[i]:windows[i+1]; window w
    is ids[offsets[w]:offsets[w+1]], with `labels` and `starts` aligned to it. The gold tags
    of sentence i's words (every word of the file) are word_tags[word_offsets[i]:...]; the
    words window w scores, at its `starts` in order, are scored[score_offsets[w]:...] (indices
    into word_tags). A training split has one window per sentence, cut at max_length."""

    ids: np.ndarray  # int32 sub-word ids
    labels: np.ndarray  # int32 tag id per position, IGNORE where the loss skips it
    starts: np.ndarray  # bool: the first sub-token of a word this window scores
    offsets: np.ndarray  # int64, windows + 1
    windows: np.ndarray  # int64, n + 1: each sentence's windows
    word_tags: np.ndarray  # int32 gold tag id per word
    word_offsets: np.ndarray  # int64, n + 1
    scored: np.ndarray  # int64 per start position: the word it scores (index in word_tags)
    max_length: int = 0  # sub-words per window, special tokens included
    words_cut: int = 0  # training: words beyond max_length, not trained
    words_lost: int = 0  # words the tokenizer maps to no sub-token (no prediction)
    examples: list[str] = field(default_factory=list)  # a few of the lost words

    def __len__(self) -> int:
        return len(self.windows) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Sub-words per sentence, over all its windows (one window when not windowed)."""
        return np.diff(self.offsets[self.windows])

    @property
    def score_offsets(self) -> np.ndarray:
        """Per window, where its words start in `scored` (windows + 1)."""
        return np.concatenate([[0], np.cumsum(self.starts, dtype=np.int64)])[self.offsets]

    @property
    def windowed(self) -> int:
        """Sentences read in more than one window."""
        return int((np.diff(self.windows) > 1).sum())


def continuation_ids(label_names: list[str]) -> np.ndarray:
    """The id a non-first sub-token gets under `label_all_subtokens`: the word's own tag,
    but I-X for a B-X word when I-X exists (a sub-token inside an entity does not begin one)."""
    index = {name: i for i, name in enumerate(label_names)}
    return np.array([index.get("I-" + name[2:], i) if name.startswith("B-") else i
                     for i, name in enumerate(label_names)], dtype=np.int32)


def encode(sentences: TaggedSentences, tokenizer, max_length: int, label_names: list[str],
           all_subtokens: bool, windowed: bool = False) -> TaggedSplit:
    """Sub-word ids with the label on each word's first sub-token (or all of them).

    Not `windowed` (training): a sentence is one window cut at `max_length`; the words past
    it are counted in `words_cut`. `windowed` (evaluation): a longer sentence is read in
    windows of `max_length` that overlap by half, and each word is scored once, in the window
    where its first sub-token has the most context (the most sub-words on its shorter side),
    so every word of the file is scored whatever max_length or tokenizer a trial has.
    """
    index = {name: i for i, name in enumerate(label_names)}
    inside = continuation_ids(label_names)
    encoded = tokenizer(sentences.words, is_split_into_words=True, truncation=False,
                        padding=False, return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)  # no "longer than the model's maximum": windows follow
    out = _Arrays()
    for i, (words, tags) in enumerate(zip(sentences.words, sentences.tags)):
        seen = out.sentence(encoded["input_ids"][i], encoded.word_ids(i),
                            [index[t] for t in tags], max_length,
                            inside if all_subtokens else None, windowed)
        missing = [w for w in range(len(words)) if w not in seen]
        out.lost += len(missing)
        out.examples += [repr(words[w]) for w in missing][:3 - len(out.examples)]
    return out.split(max_length)


class _Arrays:
    """The flat arrays of a split, filled one sentence at a time."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.starts: list[bool] = []
        self.window_lengths: list[int] = []
        self.windows = [0]
        self.word_tags: list[int] = []
        self.word_offsets = [0]
        self.scored: list[int] = []
        self.cut = self.lost = 0
        self.examples: list[str] = []

    def sentence(self, ids: list[int], word_ids: list[int | None], tag_ids: list[int],
                 max_length: int, inside: np.ndarray | None, windowed: bool) -> set[int]:
        """Add one sentence: its windows, their labels and the words each scores; returns
        the words that have a sub-token."""
        content = [p for p, word in enumerate(word_ids) if word is not None]
        begin, end = (content[0], content[-1] + 1) if content else (len(ids), len(ids))
        prefix, suffix = ids[:begin], ids[end:]
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ConfigError(f"model.max_length: {max_length} leaves no room for a word "
                              f"beside the tokenizer's {len(prefix) + len(suffix)} special "
                              "tokens")
        body, body_words = ids[begin:end], word_ids[begin:end]
        spans = _windows(len(body), room, windowed)
        first: dict[int, int] = {}  # word -> position of its first sub-token in `body`
        for position, word in enumerate(body_words):
            if word is not None:
                first.setdefault(word, position)
        owner = {word: _best_window(position, spans) for word, position in first.items()}
        self.cut += sum(window is None for window in owner.values())
        owner[None] = None  # a special token inside the text (none for a single sentence)
        base = len(self.word_tags)
        for number, (a, b) in enumerate(spans):
            self.ids += prefix + body[a:b] + suffix
            self.labels += [IGNORE] * len(prefix)
            self.starts += [False] * len(prefix)
            for position in range(a, b):
                word = body_words[position]
                mine, start = owner[word] == number, first.get(word) == position
                self.starts.append(mine and start)
                if mine and start:
                    self.labels.append(tag_ids[word])
                    self.scored.append(base + word)
                elif mine and inside is not None:
                    self.labels.append(int(inside[tag_ids[word]]))
                else:
                    self.labels.append(IGNORE)
            self.labels += [IGNORE] * len(suffix)
            self.starts += [False] * len(suffix)
            self.window_lengths.append(len(prefix) + b - a + len(suffix))
        self.windows.append(self.windows[-1] + len(spans))
        self.word_tags += tag_ids
        self.word_offsets.append(len(self.word_tags))
        return set(first)

    def split(self, max_length: int) -> TaggedSplit:
        return TaggedSplit(np.asarray(self.ids, dtype=np.int32),
                           np.asarray(self.labels, dtype=np.int32),
                           np.asarray(self.starts, dtype=bool), _offsets(self.window_lengths),
                           np.asarray(self.windows, dtype=np.int64),
                           np.asarray(self.word_tags, dtype=np.int32),
                           np.asarray(self.word_offsets, dtype=np.int64),
                           np.asarray(self.scored, dtype=np.int64), max_length, self.cut,
                           self.lost, self.examples)


def _windows(length: int, room: int, windowed: bool) -> list[tuple[int, int]]:
    """[a, b) spans of `length` sub-words, at most `room` each: the first only, or windows
    that overlap by half a window until the last reaches the end."""
    spans, start = [(0, min(room, length))], 0
    while windowed and spans[-1][1] < length:
        start += room - room // 2
        spans.append((start, min(start + room, length)))
    return spans


def _best_window(position: int, spans: list[tuple[int, int]]) -> int | None:
    """The window where `position` has the most context (the smaller of its sub-words before
    and after it; the earlier window on a tie), None when no window holds it."""
    best, context = None, -1
    for number, (a, b) in enumerate(spans):
        if a <= position < b and min(position - a, b - 1 - position) > context:
            best, context = number, min(position - a, b - 1 - position)
    return best


def collate(split: TaggedSplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """The windows of the sentences at `indices`, one row each (in order), padded to the
    longest of them; padding is ignored by the loss. `sentence_windows` holds each
    sentence's window count: its length, the batch's sentences, is how many rows the task's
    forward passes through the model at once (`passes`)."""
    import torch

    counts = split.windows[indices + 1] - split.windows[indices]
    rows = np.concatenate([np.arange(split.windows[i], split.windows[i + 1]) for i in indices])
    begin, end = split.offsets[rows], split.offsets[rows + 1]
    width = int((end - begin).max())
    shape = (len(rows), width)
    ids, mask = np.full(shape, pad_token_id, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    labels, starts = np.full(shape, IGNORE, dtype=np.int64), np.zeros(shape, dtype=bool)
    for row, (a, b) in enumerate(zip(begin, end)):
        ids[row, :b - a], mask[row, :b - a] = split.ids[a:b], 1
        labels[row, :b - a], starts[row, :b - a] = split.labels[a:b], split.starts[a:b]
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels), "word_starts": torch.from_numpy(starts),
            "sentence_windows": torch.from_numpy(counts.astype(np.int64))}


def passes(batch: dict) -> list[slice]:
    """The rows of a collated batch in passes of at most as many rows as it has sentences.

    A batch of B sentences is B rows in training (one window each), but an eval sentence
    longer than max_length adds a row per window, and length sorting gathers the most
    windowed sentences in one batch (UD EWT dev at max_length 32: 256 windows in a batch of
    128). Passing at most B rows at once keeps a forward pass within the loop's batch size x
    max_length, the memory a user sized `train.eval_batch_size` for. The sentence count is
    the length of `sentence_windows`, a shape: no device sync."""
    rows, step = len(batch["input_ids"]), len(batch["sentence_windows"])
    return [slice(start, start + step) for start in range(0, rows, step)]


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
