"""From window logits to answers, and the official SQuAD scores of answers (no torch here).

Scoring is the official SQuAD 2.0 evaluation script's ("Official evaluation script for SQuAD
version 2.0", Rajpurkar et al.), without a no-answer probability file: an answer and a gold
answer are normalised (lower case, ASCII punctuation removed, the articles a/an/the removed,
whitespace collapsed); `exact` is 1 when they are equal, `f1` is the F1 of their bags of
tokens; a question takes its best score over its gold answers, the golds being the answers
whose normalised text is not empty, else the empty answer, so an unanswerable question
scores 1 only for an empty prediction. Figures are percentages over all questions and over
the answerable (`HasAns_*`) and unanswerable (`NoAns_*`) ones, each where there are any.
The search and `squad_scores` share this one core.

Answers: each window keeps the `n_best` best start and the `n_best` best end positions among
its context tokens (the trial computes those on its device: `QuestionAnswering.predict`);
here every start/end pair of a window is scored (start logit + end logit) at once, pairs with
end < start or longer than `max_answer_length` tokens are dropped, a question takes the best
pair over all its windows, and where the model was taught unanswerable questions (SQuAD 2.0)
the empty answer wins when the null score (the classifier token's start + end logit, the
smallest over the question's windows) beats that pair by more than the threshold.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official script's)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def gold_forms(texts: list[str]) -> list[str]:
    """The normalised gold answers a prediction is compared with: those that are not empty
    once normalised, else the empty answer (an unanswerable question)."""
    forms = [form for form in map(normalize_answer, texts) if form]
    return forms or [""]


def token_f1(gold: list[str], predicted: list[str]) -> float:
    """F1 of two bags of tokens; two empty bags agree (1), one empty bag scores 0."""
    if not gold or not predicted:
        return float(gold == predicted)
    same = sum((Counter(gold) & Counter(predicted)).values())
    if not same:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def question_scores(predicted: str, golds: list[str]) -> tuple[float, float]:
    """(exact, f1) of one prediction: the best over `golds` (`gold_forms` of its answers)."""
    form = normalize_answer(predicted)
    tokens = form.split()
    return (float(max(gold == form for gold in golds)),
            max(token_f1(gold.split(), tokens) for gold in golds))


def official_scores(predictions: list[str], golds: list[list[str]], has_answer: np.ndarray
                    ) -> dict[str, float]:
    """The official script's figures (percent) for predictions in question order."""
    scored = [question_scores(p, g) for p, g in zip(predictions, golds)]
    exact = np.array([e for e, _ in scored], dtype=np.float64)
    f1 = np.array([f for _, f in scored], dtype=np.float64)
    out = _figures(exact, f1, "")
    for name, mask in (("HasAns", has_answer), ("NoAns", ~has_answer)):
        if mask.any():
            out.update(_figures(exact[mask], f1[mask], f"{name}_"))
    return out


def _figures(exact: np.ndarray, f1: np.ndarray, prefix: str) -> dict[str, float]:
    # summed in question order with Python floats, as the official script sums its dicts
    total = len(exact)
    return {f"{prefix}exact": 100.0 * sum(exact.tolist()) / total,
            f"{prefix}f1": 100.0 * sum(f1.tolist()) / total, f"{prefix}total": total}


def best_spans(start_index: np.ndarray, start_logit: np.ndarray, end_index: np.ndarray,
               end_logit: np.ndarray, max_answer_length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window (rows), the best valid pair of its candidates: (score, start, end); score
    -inf where no pair is valid. Candidates are (W, n) token positions and logits, -inf
    logits marking positions that are not candidates."""
    scores = start_logit[:, :, None] + end_logit[:, None, :]  # (W, n, n)
    span = end_index[:, None, :] - start_index[:, :, None]
    valid = (span >= 0) & (span < max_answer_length) & np.isfinite(scores)
    flat = np.where(valid, scores, -np.inf).reshape(len(scores), -1)
    pick = flat.argmax(axis=1)
    rows = np.arange(len(flat))
    n = start_index.shape[1]
    return flat[rows, pick], start_index[rows, pick // n], end_index[rows, pick % n]


def choose_windows(score: np.ndarray, null: np.ndarray, question_windows: np.ndarray,
                   null_answers: bool, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per question (its windows are question_windows[q]:question_windows[q + 1]): the window
    holding its best span, and whether the answer is empty instead (no valid span, or the
    null score beats the best span by more than `threshold` where `null_answers`)."""
    firsts = question_windows[:-1]
    group = np.repeat(np.arange(len(firsts)), np.diff(question_windows))
    best = np.maximum.reduceat(score, firsts)
    is_best = score == best[group]
    _, first_best = np.unique(group[is_best], return_index=True)  # the first best window
    window = np.flatnonzero(is_best)[first_best]
    empty = ~np.isfinite(best)
    if null_answers:
        with np.errstate(invalid="ignore"):  # -inf - -inf: no span at all, empty anyway
            empty |= np.minimum.reduceat(null, firsts) - best > threshold
    return window, empty
