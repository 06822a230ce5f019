"""Extractive question answering (SQuAD v1.1 and v2.0): the answer is a span of the context.

The driver reads the questions (`_squad`: SQuAD JSON, or JSONL/Parquet rows in the Hugging
Face `squad`/`squad_v2` layout), keeps a seeded subset of questions (`data.max_train_samples`,
`data.max_eval_samples`: all windows of a question stay together) and encodes them once into
windows (`_qa_windows`): a sample is a window, so batches, `samples_seen` and PBT's batch
sizes count windows, and a question with a long context gives several.

The model is `AutoModelForQuestionAnswering` (a start and an end logit per token, its head
drawn from the trial's seed). The loss of a window is the mean of the cross-entropies of its
start and its end position over its real tokens (padding is masked, so how windows fall into
micro-batches changes nothing), summed over the windows of a micro-batch; the loop divides
by the step's windows. Evaluation scores every window of every eval question and picks each
question's answer across its windows (`_qa_answers`); the metrics are the official SQuAD 2.0
script's `exact` and `f1` in percent (`eval_exact`, `eval_f1`, and `eval_HasAns_f1`,
`eval_NoAns_f1` where the eval data has both kinds of question). `squad_scores` scores a
file of predictions with the same core.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from raytune_ft.config import DataSettings
from raytune_ft.errors import DataError, RaytuneFtError
from raytune_ft.tasks._base import DataBundle, Metric, Task
from raytune_ft.tasks._qa_answers import (
    best_spans,
    choose_windows,
    official_scores,
)
from raytune_ft.tasks._qa_windows import Decoding, QASplit, collate, encode, qa_tokenizer

if TYPE_CHECKING:
    import torch

    from raytune_ft.tasks._squad import Questions

log = logging.getLogger(__name__)


class QuestionAnsweringData(DataSettings):
    """Questions on contexts: SQuAD JSON (v1.1 or v2.0), or JSONL/Parquet rows in the Hugging
    Face squad layout (train_file and eval_file are required); max_train_samples and
    max_eval_samples count questions."""

    kind: Literal["question_answering"] = "question_answering"
    doc_stride: int | None = Field(None, gt=0)  # context tokens consecutive windows share;
    #   None: max_length // 3 (HF's 128 of 384); searchable as data.doc_stride (listed values)
    n_best: int = Field(20, gt=0)  # start and end candidates kept per window at evaluation
    max_answer_length: int = Field(30, gt=0)  # longest predicted answer, in tokens
    null_score_threshold: float = 0.0  # SQuAD 2.0: answer "" when null score - best > this
    id_column: str = "id"  # the row layout's question id column (HF squad / squad_v2 names)
    question_column: str = "question"  # the column of question texts
    context_column: str = "context"  # the column of contexts (passages) answers index into
    answers_column: str = "answers"  # {text: [...], answer_start: [...]}; empty: unanswerable

    @model_validator(mode="after")
    def _files(self) -> QuestionAnsweringData:
        if self.train_file is None:
            raise ValueError("data.train_file is required with data.kind question_answering "
                             "(SQuAD JSON, or JSONL/Parquet rows in the squad layout)")
        return self

# The head's two outputs per token (start, end) as its `label_names`: transformers' default
# names, which every question-answering folder carries, so a folder's own QA head (a model
# fine-tuned on SQuAD) is kept by `load_pretrained`'s rule rather than drawn afresh.
HEAD = ["LABEL_0", "LABEL_1"]
# The official script's figures a trial reports, as eval_<name>.
REPORTED = {"exact": "eval_exact", "f1": "eval_f1", "HasAns_f1": "eval_HasAns_f1",
            "NoAns_f1": "eval_NoAns_f1"}


def doc_stride(data: QuestionAnsweringData, max_length: int) -> int:
    """The stride in force: `data.doc_stride`, else a third of the window (Hugging Face's
    128 of 384)."""
    return data.doc_stride if data.doc_stride is not None else max_length // 3


def data_name(train_file: str) -> str:
    """What the header calls the data: `squad/train.json` is `squad`, `my_qa.jsonl` `my_qa`."""
    path = Path(train_file).expanduser()
    generic = path.stem.lower() in ("train", "training") or path.stem.lower().startswith(
        "train-")
    return path.resolve().parent.name if generic and path.resolve().parent.name else path.stem


def read(data: QuestionAnsweringData, path: str, where: str) -> Questions:
    from raytune_ft.tasks._squad import Columns, read_questions

    return read_questions(path, where, Columns(data.id_column, data.question_column,
                                               data.context_column, data.answers_column))


def read_splits(data: QuestionAnsweringData) -> tuple[Questions, Questions]:
    """Both splits' questions, each subset as the experiment says (seeded)."""
    from raytune_ft.tasks._squad import subset

    train = read(data, data.train_file, "data.train_file")
    dev = read(data, data.eval_file, "data.eval_file")
    return (subset(train, data.max_train_samples, data.subset_seed),
            subset(dev, data.max_eval_samples, data.subset_seed))


def squad_scores(squad_json_path: str | Path, predictions: dict[str, str]) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation script's figures for `predictions` (question id ->
    answer text, "" for no answer) on a SQuAD JSON (or rows) file: exact, f1, total, and
    HasAns_* / NoAns_* where the file has such questions. Every question needs a prediction
    (the official script fails on a missing one)."""
    from raytune_ft.tasks._squad import read_questions

    questions = read_questions(str(squad_json_path), "squad file")
    missing = [qid for qid in questions.ids if qid not in predictions]
    if missing:
        raise DataError(f"predictions: {len(missing)} question(s) of {squad_json_path} have no "
                        f"prediction (e.g. {missing[0]})")
    return official_scores([predictions[qid] for qid in questions.ids], questions.golds(),
                           questions.has_answer)


def answers(split: QASplit, predictions: list[tuple[np.ndarray, tuple]]) -> list[str]:
    """Each eval question's answer text from the (window indices, `predict` output) of every
    eval batch, in any order (gathered from several workers too)."""
    decoding = split.decoding
    count, n = len(split), decoding.n_best
    start_index, end_index = np.zeros((count, n), np.int64), np.zeros((count, n), np.int64)
    start_logit = np.full((count, n), -np.inf, np.float32)
    end_logit = np.full((count, n), -np.inf, np.float32)
    null = np.zeros(count, np.float32)
    for indices, (si, sl, ei, el, nl) in predictions:
        k = si.shape[1]  # a batch of windows shorter than n_best keeps fewer
        start_index[indices, :k], start_logit[indices, :k] = si, sl
        end_index[indices, :k], end_logit[indices, :k] = ei, el
        null[indices] = nl
    score, start, end = best_spans(start_index, start_logit, end_index, end_logit,
                                   decoding.max_answer_length)
    window, empty = choose_windows(score, null, split.question_windows, decoding.null_answers,
                                   decoding.null_score_threshold)
    first = split.offsets[window] + start[window]
    last = split.offsets[window] + end[window]
    texts = []
    for q in range(len(window)):
        if empty[q]:
            texts.append("")
            continue
        context = split.contexts[split.context_of[q]]
        texts.append(context[split.char_starts[first[q]]:split.char_ends[last[q]]])
    return texts


def _span_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               smoothing: float) -> torch.Tensor:
    """Cross-entropy of one position per window over its real tokens, summed over windows;
    label smoothing spreads its share over those tokens only."""
    import torch

    logp = torch.log_softmax(logits.float().masked_fill(~mask, float("-inf")), dim=-1)
    loss = -logp.gather(1, target[:, None]).squeeze(1)
    if smoothing:
        spread = -logp.masked_fill(~mask, 0.0).sum(-1) / mask.sum(-1)
        loss = (1 - smoothing) * loss + smoothing * spread
    return loss.sum()


class QuestionAnswering(Task):
    name = "question_answering"
    primary_metric = "eval_f1"
    settings = QuestionAnsweringData
    example = {"kind": "question_answering", "train_file": "squad/train.json",
               "eval_file": "squad/dev.json"}
    tokenization_fields = ("doc_stride",)
    metrics = (Metric("eval_f1", "max", 0.0), Metric("eval_exact", "max", 0.0),
               Metric("eval_HasAns_f1", "max", 0.0), Metric("eval_NoAns_f1", "max", 0.0))
    pipeline_tag = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    samples_are = "windows"

    def check_encoding(self, data: QuestionAnsweringData, max_length: int) -> None:
        stride = doc_stride(data, max_length)
        if stride >= max_length:
            raise ValueError(f"data.doc_stride: {stride} is not below model.max_length "
                             f"{max_length}; the stride is the number of context tokens "
                             "consecutive windows share")

    def load_data(self, data: QuestionAnsweringData, model_path: str, max_length: int
                  ) -> DataBundle:
        from raytune_ft.training.model import check_tokenizer

        tokenizer = qa_tokenizer(model_path)
        train, dev = read_splits(data)
        stride = doc_stride(data, max_length)
        decoding = Decoding(data.n_best, data.max_answer_length, data.null_score_threshold,
                            null_answers=train.unanswerable > 0)
        log.info("encoding %d train and %d eval questions", len(train), len(dev))
        encoded = (encode(train, tokenizer, max_length, stride),
                   encode(dev, tokenizer, max_length, stride, decoding))
        check_tokenizer(tokenizer, model_path, encoded[0])
        metrics = ["eval_f1", "eval_loss", "eval_exact"]
        if encoded[1].has_answer.any() and not encoded[1].has_answer.all():
            metrics += ["eval_HasAns_f1", "eval_NoAns_f1"]
        return DataBundle(*encoded, list(HEAD), int(tokenizer.pad_token_id or 0),
                          data_name(data.train_file), metrics, self.name)

    def describe(self, bundle: DataBundle) -> list[tuple[str, str]]:
        """Questions (the same for every encoding a search makes), their windows (which
        differ by max_length and stride) and how answers are chosen."""
        train, dev = bundle.train, bundle.eval
        decoding = dev.decoding

        def questions(split: QASplit) -> str:
            return f"{split.source_examples} ({int((~split.has_answer).sum())} unanswerable)"

        null = (f"SQuAD 2.0: the empty answer when its score beats the best span by more than "
                f"data.null_score_threshold {decoding.null_score_threshold:g}"
                if decoding.null_answers else
                "SQuAD 1.1: no training question is unanswerable, every question gets a span")
        return [("questions", f"train {questions(train)}, eval {questions(dev)}"),
                ("windows", f"train {len(train)}, eval {len(dev)} of <= {train.max_length} "
                            f"tokens sharing {train.doc_stride} (data.doc_stride), question "
                            f"first; answers lost to truncation: {train.answers_lost} train, "
                            f"{dev.answers_lost} eval; a sample is a window"),
                ("answers", f"{null}; the best of data.n_best {decoding.n_best} starts x "
                            f"ends per window, at most data.max_answer_length "
                            f"{decoding.max_answer_length} tokens; eval_f1 and eval_exact in "
                            "percent (the official SQuAD 2.0 script's)")]

    def warnings(self, bundle: DataBundle, data: QuestionAnsweringData) -> list[str]:
        out = []
        for name, split in (("train", bundle.train), ("eval", bundle.eval)):
            if split.answers_lost:
                out.append(f"{split.answers_lost} {name} answer(s) are held whole by no window "
                           f"(longer than the {split.doc_stride} tokens windows share): "
                           f"{'trained as unanswerable' if name == 'train' else 'cannot be found'}"
                           "; raise data.doc_stride or model.max_length")
        return out

    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        from raytune_ft.training.model import load_pretrained

        return load_pretrained(self.auto_class, path, seed, list(HEAD))

    def collate(self, data: DataBundle, split: QASplit, indices: np.ndarray) -> dict:
        return collate(split, indices, data.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict) -> tuple:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                  if k in batch}
        outputs = model(**inputs)
        return outputs.start_logits, outputs.end_logits

    def loss(self, outputs: tuple, batch: dict, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        mask = batch["attention_mask"].bool()
        start = _span_loss(outputs[0], batch["start_positions"], mask, label_smoothing)
        end = _span_loss(outputs[1], batch["end_positions"], mask, label_smoothing)
        return (start + end) / 2

    def predict(self, outputs: tuple, batch: dict) -> tuple[np.ndarray, ...]:
        """Per window: the n best start and end positions among its context tokens with
        their logits, and its null score (the classifier token's start + end logit)."""
        import torch

        start, end = (logits.float() for logits in outputs)
        positions = torch.arange(start.shape[1], device=start.device)
        span = batch["context_span"]
        context = (positions >= span[:, :1]) & (positions <= span[:, 1:])
        k = min(int(batch["n_best"]), start.shape[1])
        top_start = start.masked_fill(~context, float("-inf")).topk(k, dim=1)
        top_end = end.masked_fill(~context, float("-inf")).topk(k, dim=1)
        null = start[:, 0] + end[:, 0]
        return tuple(t.cpu().numpy() for t in (top_start.indices, top_start.values,
                                                top_end.indices, top_end.values, null))

    def compute_metrics(self, data: DataBundle, predictions: list[tuple[np.ndarray, Any]]
                        ) -> dict[str, float]:
        split: QASplit = data.eval
        scores = official_scores(answers(split, predictions), split.golds, split.has_answer)
        return {name: float(scores[key]) for key, name in REPORTED.items() if key in scores}

    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        tokenizer = qa_tokenizer(model_path)
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(out)

    def card_input(self, config) -> list[str]:
        length = config.model.max_length
        return [f"- max length: {length} tokens per window, question first; contexts cut "
                f"into windows sharing {doc_stride(config.data, length)} tokens (doc_stride)"]

    def usage(self) -> list[str]:
        return ["import torch",
                f"from transformers import {self.auto_class}, AutoTokenizer", "",
                f'model = {self.auto_class}.from_pretrained("<this folder>")',
                'tokenizer = AutoTokenizer.from_pretrained("<this folder>")']

    def card_usage(self, config) -> list[str]:
        """`usage`, then what `pipeline("question-answering")` did, which transformers 5
        removed: the context in windows as in training, the best span over them (the empty
        answer where the null score wins, as the trial decided), on the first answerable
        question the trial was scored on. Where the data files cannot be read any more, the
        card has `usage` alone (one warning; answer()'s null rule follows the training data)
        and the export goes on."""
        data, length = config.data, config.model.max_length
        try:
            train, dev = read_splits(data)  # dev: the questions the trial was scored on
        except (RaytuneFtError, OSError, ValueError) as error:
            log.warning("the card has no answer() example: the data cannot be read (%s)",
                        error)
            return [*self.usage(), "# the data files could not be read at export: no "
                    "answer() example (it follows the training data's unanswerable questions)"]
        empty = (f"null > best_score + {data.null_score_threshold!r}" if train.unanswerable
                 else "False")
        code = CARD_ANSWER.format(length=length, stride=doc_stride(data, length),
                                  longest=data.max_answer_length, empty=empty)
        q = next((i for i, a in enumerate(dev.answers) if a), 0)
        gold = dev.answers[q][0][0] if dev.answers[q] else ""
        return [*self.usage(), *code.splitlines(), "",
                f"# question {dev.ids[q]} of {Path(data.eval_file).name} (a gold answer: "
                f"{gold!r})",
                f"question = {dev.questions[q]!r}", f"context = {dev.context(q)!r}",
                "print(answer(question, context))"]


# The model card's answer(): what transformers 4's pipeline("question-answering") did (gone in
# transformers 5), with the trial's windows, longest span and null rule.
CARD_ANSWER = """
# transformers 5 removed pipeline("question-answering"); answer() does its work with the
# windows the model was trained on ({length} tokens, {stride} shared) and spans of at most
# {longest} tokens


def answer(question, context):
    enc = tokenizer(question.lstrip(), context, truncation="only_second", max_length={length},
                    stride={stride}, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    with torch.no_grad():
        out = model(**enc)
    best, best_score, null = "", float("-inf"), float("inf")
    for w in range(len(offsets)):
        start, end = out.start_logits[w], out.end_logits[w]
        null = min(null, float(start[0] + end[0]))  # the classifier token: no answer
        inside = torch.tensor([s == 1 for s in enc.sequence_ids(w)])  # context tokens
        scores = start[:, None] + end[None, :]
        spans = torch.ones_like(scores, dtype=torch.bool).triu().tril({longest} - 1)
        scores = scores.masked_fill(~(spans & inside[:, None] & inside[None, :]), float("-inf"))
        s, e = divmod(int(scores.argmax()), scores.shape[1])
        if scores[s, e] > best_score:
            best_score = float(scores[s, e])
            best = context[offsets[w][s][0]:offsets[w][e][1]]
    return "" if {empty} else best
"""


TASK = QuestionAnswering()
