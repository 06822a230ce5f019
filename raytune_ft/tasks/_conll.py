"""Read tagged sentences: CoNLL-U, CoNLL-2003-style column files, JSONL/Parquet list columns.

Every reader returns the words and tags of each sentence and the line it starts on, and
refuses what a user can get wrong (a line with too few fields, a missing tag, token and tag
counts that differ, an empty file) with the config field, the file and the line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytune_ft.errors import DataError

# data.format -> what it reads; None in the config: chosen by the file's suffix.
FORMATS = ("conllu", "conll", "table")
SUFFIX_FORMATS = {".conllu": "conllu", ".jsonl": "table", ".json": "table",
                  ".parquet": "table"}  # any other suffix (.conll, .txt, .iob): conll
CONLLU_COLUMNS = {"upos": 3, "xpos": 4}  # CoNLL-U tag columns; misc:KEY reads a MISC key
MISC_PREFIX = "misc:"


@dataclass
class TaggedSentences:
    """A file's sentences: words and their tags, and where each sentence starts."""

    words: list[list[str]]
    tags: list[list[str]]
    starts: list[int]  # line (text formats) or row (Parquet) number of each sentence
    where: str  # the config field naming the file: data.train_file or data.eval_file
    path: Path
    rows: bool = False  # starts are rows (Parquet), not lines

    def __len__(self) -> int:
        return len(self.words)

    def add(self, words: list[str], tags: list[str], start: int) -> None:
        self.words.append(words)
        self.tags.append(tags)
        self.starts.append(start)

    def at(self, sentence: int) -> str:
        place = "row" if self.rows else "line"
        return f"{self.where}: {self.path} {place} {self.starts[sentence]}"


def file_format(path: str, declared: str | None) -> str:
    """data.format where set, else the one the suffix names (conll for any other suffix)."""
    return declared or SUFFIX_FORMATS.get(Path(path).suffix.lower(), "conll")


def check_tag_column(fmt: str, tag_column: str | None, tokens_column: str | None) -> None:
    """Refuse column settings the format cannot use (ValueError, one line, at validation)."""
    if fmt == "conllu":
        if tag_column is not None and tag_column not in CONLLU_COLUMNS and not (
                tag_column.startswith(MISC_PREFIX) and len(tag_column) > len(MISC_PREFIX)):
            raise ValueError(f"data.tag_column: {tag_column!r} is not a CoNLL-U tag column; "
                             "allowed: upos, xpos, or misc:KEY (a key of the MISC column)")
    elif fmt == "conll":
        if tag_column is not None or tokens_column is not None:
            raise ValueError("data.tag_column/tokens_column: CoNLL-2003 column files take the "
                             "token from the first column and the tag from the last; remove them")
    elif tag_column is None or tokens_column is None:
        raise ValueError("data.tokens_column and data.tag_column are required with JSONL/"
                         "Parquet tagged files (a list of words and a list of tags per row)")


def read_tagged(path_text: str, where: str, fmt: str, tag_column: str | None,
                tokens_column: str | None) -> TaggedSentences:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist")
    if fmt == "table":
        sentences = _read_table(path, where, tokens_column, tag_column)
    else:
        try:
            with path.open(encoding="utf-8-sig") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{where}: cannot read {path}: {error}") from None
        read = _read_conllu if fmt == "conllu" else _read_conll
        sentences = read(lines, TaggedSentences([], [], [], where, path), tag_column)
    if not sentences.words:
        raise DataError(f"{where}: {path} holds no sentences (read as {fmt})")
    return sentences


def _read_conllu(lines: list[str], out: TaggedSentences, tag_column: str | None
                 ) -> TaggedSentences:
    """Ten tab-separated columns per token; multiword-token (1-2) and empty-node (1.1)
    lines are not words of the tagging and are skipped."""
    column = tag_column or "upos"
    words, tags, start = [], [], 0
    for number, line in enumerate([*lines, ""], start=1):
        if not line.strip():
            if words:
                out.add(words, tags, start)
            words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise DataError(f"{out.where}: {out.path} line {number}: {len(fields)} tab-separated "
                            "fields, CoNLL-U has 10 (is it a CoNLL-2003 file? set data.format)")
        if "-" in fields[0] or "." in fields[0]:
            continue
        tag = _conllu_tag(fields, column)
        if tag in (None, "_", ""):
            raise DataError(f"{out.where}: {out.path} line {number}: word {fields[1]!r} has no "
                            f"{column} tag ({tag or 'missing'}); every word needs one")
        if not words:
            start = number
        words.append(fields[1])
        tags.append(tag)
    return out


def _conllu_tag(fields: list[str], column: str) -> str | None:
    if column in CONLLU_COLUMNS:
        return fields[CONLLU_COLUMNS[column]]
    key = column[len(MISC_PREFIX):]
    for item in fields[9].split("|"):
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


def _read_conll(lines: list[str], out: TaggedSentences, tag_column: str | None
                ) -> TaggedSentences:
    """Columns, the token first, the tag last; a blank line between sentences; -DOCSTART-
    lines (document boundaries) are skipped, whatever their separator. A file with a tab
    anywhere is tab-separated (a token may then hold spaces: `New York<TAB>B-LOC` is the
    word "New York"; empty fields after the tag, a trailing tab, are dropped); a file
    without tabs is split on any whitespace, as CoNLL-2003's own files are."""
    tabbed = any("\t" in line for line in lines)
    rows = [_columns(line, tabbed) for line in lines]
    width = _usual_width(lines, rows) if tabbed else 0
    words, tags, start = [], [], 0
    for number, (line, fields) in enumerate(zip([*lines, ""], [*rows, []]), start=1):
        if not fields or _is_docstart(line):
            if words:
                out.add(words, tags, start)
            words, tags = [], []
            continue
        problem = _missing_field(line, fields, width)
        if problem:
            columns = "tab-separated columns" if tabbed else "columns"
            raise DataError(f"{out.where}: {out.path} line {number}: {problem} (CoNLL-2003 "
                            f"{columns}: token first, tag last)")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(fields[-1])
    return out


def _is_docstart(line: str) -> bool:
    return line.split(maxsplit=1)[:1] == ["-DOCSTART-"]


def _usual_width(lines: list[str], rows: list[list[str]]) -> int:
    """The number of columns most lines of a tab-separated file have (after dropping empty
    trailing fields): where a line has that many fields or more but its tag column is
    empty, its tag is missing (`EU<TAB>NNP<TAB>` in a three-column file), not `NNP`."""
    counts = Counter(len(fields) for line, fields in zip(lines, rows)
                     if fields and not _is_docstart(line))
    return counts.most_common(1)[0][0] if counts else 0


def _missing_field(line: str, fields: list[str], width: int) -> str | None:
    """What a token line lacks (its token, or its tag), None when it has both."""
    if not fields[0]:
        return "the token is empty"
    given = line.count("\t") + 1  # fields on the line, empty trailing ones included
    if "\t" in line and (len(fields) < 2 or len(fields) < width <= given):
        return f"token {fields[0]!r}: the last (tag) column is empty"
    if len(fields) < 2:
        return f"token {fields[0]!r} has no tag"
    return None


def _columns(line: str, tabbed: bool) -> list[str]:
    """A line's fields: split on tabs (each field stripped of surrounding spaces, empty
    trailing fields dropped) or on any whitespace; [] for a blank line."""
    if not line.strip():
        return []
    if not tabbed:
        return line.split()
    fields = [field.strip(" ") for field in line.strip(" \r\n").split("\t")]
    while len(fields) > 1 and not fields[-1]:
        fields.pop()
    return fields


def _read_table(path: Path, where: str, tokens_column: str, tag_column: str
                ) -> TaggedSentences:
    """JSONL or Parquet with a list of words and a list of tags per row."""
    from raytune_ft.tasks._tables import _read_table as read_rows

    table = read_rows(str(path), where)
    present = ", ".join(map(str, table.frame.columns))
    for field, name in (("tokens_column", tokens_column), ("tag_column", tag_column)):
        if name not in table.frame.columns:
            raise DataError(f"data.{field}: {name!r} not found in {where} {path}; columns "
                            f"present: {present}")
    rows = table.lines is None
    out = TaggedSentences([], [], [], where, path, rows)
    for row, (words, tags) in enumerate(zip(table.frame[tokens_column], table.frame[tag_column])):
        place = table.at(row)
        words, tags = _string_list(words, tokens_column, place), _string_list(tags, tag_column,
                                                                               place)
        if len(words) != len(tags):
            raise DataError(f"{place}: {len(words)} words in {tokens_column!r} but {len(tags)} "
                            f"tags in {tag_column!r}; every word needs one tag")
        if not words:
            raise DataError(f"{place}: an empty sentence (no words in {tokens_column!r})")
        out.add(words, tags, row + 1 if rows else table.lines[row])
    return out


def _string_list(value, column: str, place: str) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{place}: column {column!r} must hold a list of non-empty strings, "
                        f"got {str(value)[:60]}")
    return value


def subset(sentences: TaggedSentences, size: int | None, seed: int) -> TaggedSentences:
    """A fixed random subset of sentences (the same in every trial and every run)."""
    from raytune_ft.tasks._base import subset_indices

    keep = subset_indices(len(sentences), size, seed)
    if keep is None:
        return sentences
    return TaggedSentences([sentences.words[i] for i in keep], [sentences.tags[i] for i in keep],
                           [sentences.starts[i] for i in keep], sentences.where, sentences.path,
                           sentences.rows)


def label_set(train: TaggedSentences, dev: TaggedSentences, declared: list[str] | None
              ) -> list[str]:
    """The tag names in id order: `declared` (data.label_names) where set, else train's tags
    sorted. A tag outside the set (an eval tag train never had) is refused with its line."""
    names = list(declared) if declared else sorted({t for tags in train.tags for t in tags})
    known = set(names)
    for split in (train, dev) if declared else (dev,):
        for i, tags in enumerate(split.tags):
            unknown = sorted(set(tags) - known)
            if unknown:
                fix = ("add it to data.label_names" if declared else
                       "declare the full tag set in data.label_names")
                raise DataError(f"{split.at(i)}: tag(s) {', '.join(map(repr, unknown[:5]))} "
                                f"are not in the {'declared' if declared else 'training'} "
                                f"tag set ({len(names)} tags); {fix}")
    return names
