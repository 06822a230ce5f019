"""Read extractive question-answering data: SQuAD JSON (v1.1, v2.0) and rows in the Hugging
Face `squad` / `squad_v2` layout (JSONL, Parquet, or the JSON lines `datasets` writes).

SQuAD JSON is `{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`; a row is `{"id", "question",
"context", "answers": {"text": [...], "answer_start": [...]}}` (column names settable). A
question without answers is unanswerable (SQuAD 2.0: `is_impossible: true`); it is kept.

Everything a user can get wrong is refused in one line naming the file, the question id and
the rule: an `answer_start` that does not index its answer text in the context, an empty
question, context or answer, a duplicate id, an answer list that contradicts
`is_impossible`, a file without questions. Nothing is repaired silently: training on an
answer at the wrong place teaches the wrong span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raytune_ft.errors import DataError

Answer = tuple[str, int]  # (text, answer_start: its first character in the context)


@dataclass
class Questions:
    """The questions of one file, in file order; contexts are stored once each."""

    where: str  # the config field that named the file (data.train_file, data.eval_file)
    path: Path
    ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    context_of: list[int] = field(default_factory=list)  # index into `contexts`
    answers: list[list[Answer]] = field(default_factory=list)  # [] = unanswerable
    contexts: list[str] = field(default_factory=list)
    _seen: dict[str, str] = field(default_factory=dict, repr=False)  # id -> where it was

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def unanswerable(self) -> int:
        return sum(not answers for answers in self.answers)

    @property
    def has_answer(self) -> np.ndarray:
        """Whether each question has an answer (False: unanswerable, SQuAD 2.0)."""
        return np.array([bool(answers) for answers in self.answers], dtype=bool)

    def golds(self) -> list[list[str]]:
        """Each question's gold answers as the official script compares them (`gold_forms`:
        normalised; [""] for an unanswerable question)."""
        from raytune_ft.tasks._qa_answers import gold_forms

        return [gold_forms([text for text, _ in answers]) for answers in self.answers]

    def context(self, i: int) -> str:
        return self.contexts[self.context_of[i]]

    def add_context(self, text: Any, place: str, qid: Any) -> int:
        """Store a context (refusing an empty one); returns its index. `place` ("line 3: ",
        "article 2 paragraph 5: " in SQuAD JSON) and `qid` name the (first) question it
        belongs to."""
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{self.where}: {self.path} {place}question {qid}: empty context; "
                            "every question needs the text its answer is taken from")
        if not self.contexts or self.contexts[-1] != text:
            self.contexts.append(text)
        return len(self.contexts) - 1

    def add(self, qid: Any, question: Any, context: int, answers: list[Answer],
            place: str) -> None:
        """Check one question against the rules (module docstring) and keep it."""
        if isinstance(qid, (int, np.integer)) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid.strip():
            raise DataError(f"{self.where}: {self.path} {place}question without an id "
                            f"(got {qid!r}); every question needs a unique id")
        where = f"{self.where}: {self.path} {place}question {qid}"
        if qid in self._seen:
            raise DataError(f"{where}: duplicate id (first at {self._seen[qid]}); every "
                            "question needs a unique id")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: empty question")
        text = self.contexts[context]
        for n, (answer, start) in enumerate(answers, start=1):
            if not isinstance(answer, str) or not answer.strip():
                raise DataError(f"{where}: answer {n} is empty; an unanswerable question has "
                                "no answers at all")
            if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
                raise DataError(f"{where}: answer {n} has answer_start {start!r}, not a "
                                "character index")
            if text[start:start + len(answer)] != answer or start < 0:
                found = text[max(start, 0):max(start, 0) + len(answer)]
                raise DataError(f"{where}: answer {n} {_short(answer)} is not at answer_start "
                                f"{start} of its context (there: {_short(found)}); "
                                "answer_start must index the answer text in the context")
        self._seen[qid] = f"{place}question {qid}"
        self.ids.append(qid)
        self.questions.append(question)
        self.context_of.append(context)
        self.answers.append([(a, int(s)) for a, s in answers])


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class Columns:
    """The row layout's column names (data.id_column, ...): Hugging Face's by default."""

    id: str = "id"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"


def read_questions(path_text: str, where: str, columns: Columns = Columns()) -> Questions:
    """Every question of a SQuAD JSON file, or of a JSONL/Parquet file of rows."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist")
    suffix = path.suffix.lower()
    out = Questions(where, path)
    if suffix == ".parquet":
        _read_rows(_parquet_rows(path, where), out, columns)
    elif suffix in (".json", ".jsonl"):
        text = _text(path, where)
        whole = _whole_json(text) if suffix == ".json" else None
        if isinstance(whole, dict) and "data" in whole:
            _read_squad(whole, out)
        elif isinstance(whole, list):  # a JSON array of rows
            _read_rows(((f"row {i + 1}: ", row) for i, row in enumerate(whole)), out, columns)
        else:
            _read_rows(_json_lines(text, path, where), out, columns)
    else:
        raise DataError(f"{where}: {path} has suffix {suffix!r}; allowed: .json (SQuAD JSON, "
                        "or rows), .jsonl, .parquet")
    if not len(out):
        raise DataError(f"{where}: {path} holds no questions")
    return out


def _text(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: cannot read {path}: {error}") from None


def _whole_json(text: str) -> Any:
    """The file as one JSON value, or None when it is JSON lines (or not JSON at all)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _json_lines(text: str, path: Path, where: str):
    """(place, row) of every non-blank line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: {path} line {number}: not JSON ({error}); expected "
                            "SQuAD JSON ({\"data\": [...]}) or one row per line") from None
        yield f"line {number}: ", row


def _parquet_rows(path: Path, where: str):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{where}: cannot read {path}: {error}") from None
    for i, row in enumerate(frame.to_dict("records")):
        yield f"row {i + 1}: ", row


def _read_squad(whole: dict, out: Questions) -> None:
    """SQuAD JSON: articles, paragraphs, questions; `is_impossible` marks an unanswerable
    question (v2.0), whose `answers` must then be empty (`plausible_answers` are not read)."""
    articles = whole["data"]
    if not isinstance(articles, list):
        raise DataError(f"{out.where}: {out.path}: 'data' is not a list of articles")
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{out.where}: {out.path} article {a + 1}: no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas", []), list):
                raise DataError(f"{out.where}: {out.path} article {a + 1} paragraph {p + 1}: "
                                "expected {\"context\": ..., \"qas\": [...]}")
            qas = paragraph.get("qas") or []
            first = qas[0].get("id") if qas and isinstance(qas[0], dict) else None
            place = f"article {a + 1} paragraph {p + 1}: "  # 1-based, as a reader counts
            context = out.add_context(paragraph.get("context"), place, first)
            for qa in qas:
                if not isinstance(qa, dict):
                    raise DataError(f"{out.where}: {out.path} article {a + 1} paragraph "
                                    f"{p + 1}: a question is not an object ({str(qa)[:40]})")
                qid = qa.get("id")
                impossible = bool(qa.get("is_impossible", False))
                answers = [(ans.get("text"), ans.get("answer_start"))
                           for ans in qa.get("answers") or []]
                if impossible and answers:
                    raise DataError(f"{out.where}: {out.path} {place}question {qid}: "
                                    f"is_impossible is true but it has {len(answers)} "
                                    "answer(s)")
                if not impossible and not answers:
                    raise DataError(f"{out.where}: {out.path} {place}question {qid}: no "
                                    "answers, and is_impossible is not true (SQuAD 2.0 marks "
                                    "an unanswerable question so)")
                out.add(qid, qa.get("question"), context, answers, place)


def _read_rows(rows, out: Questions, columns: Columns) -> None:
    """Rows in the Hugging Face layout; an empty answer list is an unanswerable question."""
    for place, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{out.where}: {out.path} {place}a JSON {type(row).__name__}, "
                            "expected a row object (id, question, context, answers)")
        missing = [c for c in (columns.id, columns.question, columns.context, columns.answers)
                   if c not in row]
        if missing:
            raise DataError(f"{out.where}: {out.path} {place}column(s) "
                            f"{', '.join(map(repr, missing))} missing; columns present: "
                            f"{', '.join(map(str, row))} (set data.id_column, "
                            "question_column, context_column, answers_column)")
        context = out.add_context(row[columns.context], place, row[columns.id])
        answers = _row_answers(row[columns.answers], columns.answers,
                               f"{out.where}: {out.path} {place}question {row[columns.id]}")
        out.add(row[columns.id], row[columns.question], context, answers, place)


def _row_answers(value: Any, column: str, where: str) -> list[Answer]:
    """`{"text": [...], "answer_start": [...]}` as (text, start) pairs."""
    if not isinstance(value, dict) or not {"text", "answer_start"} <= set(value):
        raise DataError(f"{where}: column {column!r} must hold {{'text': [...], "
                        f"'answer_start': [...]}}, got {str(value)[:60]}")
    texts, starts = (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v
                     for v in (value["text"], value["answer_start"]))
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: column {column!r}: 'text' and 'answer_start' must be lists "
                        "of the same length")
    return [(t, int(s) if isinstance(s, np.integer) else s) for t, s in zip(texts, starts)]


def subset(questions: Questions, size: int | None, seed: int) -> Questions:
    """A fixed random subset of questions (the same in every trial and every run)."""
    from raytune_ft.tasks._base import subset_indices

    keep = subset_indices(len(questions), size, seed)
    if keep is None:
        return questions
    out = Questions(questions.where, questions.path, contexts=questions.contexts)
    out.ids = [questions.ids[i] for i in keep]
    out.questions = [questions.questions[i] for i in keep]
    out.context_of = [questions.context_of[i] for i in keep]
    out.answers = [questions.answers[i] for i in keep]
    return out
