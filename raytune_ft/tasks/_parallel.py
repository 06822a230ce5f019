"""Read sequence-to-sequence pairs: parallel text files, tables, the Hugging Face layout.

Three layouts, each for `data.train_file` and `data.eval_file`:

- parallel text files, one sentence per line, line i of one the pair of line i of the other:
  `{source: train.de, target: train.en}`, or a stem with `data.source_lang` and
  `data.target_lang` as suffixes (`train` or `train.de` -> `train.de` and `train.en`, the
  Multi30K / WMT naming);
- a table (JSONL, JSON, Parquet, CSV, TSV) with a source and a target column
  (`data.source_column`, `data.target_column`; default `source` and `target`);
- the Hugging Face translation layout: a table whose `translation` column holds
  `{de: ..., en: ...}` objects, read with `data.source_lang` and `data.target_lang`.

What would make training meaningless is refused with the file and the line: text files with
different line counts, an empty side, a side that holds only markup (`@@`, `<br />`: no
letter or digit). With `data.drop_bad_pairs` (default on) such pairs are dropped and counted
instead, and the run header says how many and where the first was: Multi30K's `train.de`
has two lines that hold `@@` alone (lines 16510 and 16664), whose pairs are dropped.
Differing line counts are always refused (the pairing itself would be wrong), and so is a
file where more than 5% of the pairs would be dropped (the wrong file or column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.errors import DataError

if TYPE_CHECKING:
    from raytune_ft.config import DataSettings

TEXT_SUFFIXES = ("", ".txt")  # a stem names text files; anything else with a suffix a table
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
TRANSLATION_COLUMN = "translation"  # the Hugging Face translation layout
# More dropped pairs than this share of a file is not a few stray lines: refused.
MAX_DROPPED_SHARE = 0.05
_CONTENT = re.compile(r"\w")  # a letter or digit, in any script: a side without one is markup


@dataclass
class Pairs:
    """One split's (source, target) texts, and the pairs dropped while reading."""

    sources: list[str]
    targets: list[str]
    where: str  # the files, for the run header
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> pairs dropped
    first_dropped: str = ""  # "file line N" of the first pair dropped

    def __len__(self) -> int:
        return len(self.sources)

    def dropped_text(self) -> str:
        """'2 pairs dropped (source holds only markup: 2; first: train.de line 16510)'."""
        if not self.dropped:
            return ""
        reasons = "; ".join(f"{reason}: {n}" for reason, n in self.dropped.items())
        total = sum(self.dropped.values())
        return f"{total} pair(s) dropped ({reasons}; first: {self.first_dropped})"


def problem(text: Any) -> str | None:
    """Why a side cannot be trained on: empty, or only markup; None when it is text."""
    if text is None or (not isinstance(text, str)) or not text.strip():
        return "empty"
    if not _CONTENT.search(text):
        return "only markup"
    return None


def text_files(spec: Any, source_lang: str | None, target_lang: str | None, where: str
               ) -> tuple[Path, Path] | None:
    """The two text files a `train_file`/`eval_file` names, or None when it names a table."""
    if isinstance(spec, dict) or hasattr(spec, "source"):
        source = spec["source"] if isinstance(spec, dict) else spec.source
        target = spec["target"] if isinstance(spec, dict) else spec.target
        return Path(source).expanduser(), Path(target).expanduser()
    path = Path(spec).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES:
        return None
    if source_lang is None or target_lang is None:
        raise DataError(f"{where}: {path} is not a table ({', '.join(TABLE_SUFFIXES)}); "
                        "parallel text files need data.source_lang and data.target_lang (the "
                        "files' suffixes) or {source: ..., target: ...}")
    if path.suffix in (f".{source_lang}", f".{target_lang}"):
        path = path.with_suffix("")  # train.de names the pair as well as train
    return (path.with_name(f"{path.name}.{source_lang}"),
            path.with_name(f"{path.name}.{target_lang}"))


def _lines(path: Path, where: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: cannot read {path} as UTF-8 text: {error}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is not an empty line
    return [line.removesuffix("\r") for line in lines]


def read_text_pairs(files: tuple[Path, Path], where: str, drop: bool) -> Pairs:
    source_path, target_path = files
    sources, targets = _lines(source_path, where), _lines(target_path, where)
    if len(sources) != len(targets):
        raise DataError(f"{where}: {source_path} has {len(sources)} lines but {target_path} "
                        f"has {len(targets)}; line i of one must translate line i of the other")
    places = [(str(source_path), f"line {n}") for n in range(1, len(sources) + 1)]
    return _screen(sources, targets, places, where, drop, f"{source_path} + {target_path.name}",
                   target_path)


def _screen(sources: list, targets: list, places: list[tuple[str, str]], where: str,
            drop: bool, described: str, target_file: Path | None = None) -> Pairs:
    """Keep the pairs with text on both sides; refuse (drop=False) or count the others.
    `places[i]`: (file, "line N"/"row N") of pair i on its source side."""
    pairs = Pairs([], [], described)
    for i, (source, target) in enumerate(zip(sources, targets)):
        side, why = "source", problem(source)
        if why is None:
            side, why = "target", problem(target)
        if why is None:
            pairs.sources.append(source)
            pairs.targets.append(target)
            continue
        file, place = places[i]
        if side == "target" and target_file is not None:
            file = str(target_file)
        if not drop:
            shown = source if side == "source" else target
            raise DataError(f"{where}: {file} {place}: the {side} is {why} ({shown!r}); fix "
                            "or remove the pair, or set data.drop_bad_pairs: true to drop "
                            "and count such pairs")
        reason = f"{side} {'is empty' if why == 'empty' else 'holds only markup'}"
        pairs.dropped[reason] = pairs.dropped.get(reason, 0) + 1
        pairs.first_dropped = pairs.first_dropped or f"{Path(file).name} {place}"
    dropped = sum(pairs.dropped.values())
    if dropped > MAX_DROPPED_SHARE * len(sources):
        raise DataError(f"{where}: {described}: {pairs.dropped_text()} of {len(sources)}, "
                        f"more than {MAX_DROPPED_SHARE:.0%}: not a few stray lines but the "
                        "wrong files or columns")
    return pairs


def read_table_pairs(path_text: str, data: DataSettings, where: str) -> Pairs:
    """A table with source and target columns, or the translation layout."""
    from raytune_ft.tasks._tables import _read_table

    table = _read_table(path_text, where)
    frame = table.frame
    places = [(str(table.path), f"line {table.lines[i]}" if table.lines is not None
               else f"row {i + 1}") for i in range(len(frame))]
    present = ", ".join(map(str, frame.columns))
    translation = data.source_column is None and TRANSLATION_COLUMN in frame.columns
    if translation:
        if data.source_lang is None or data.target_lang is None:
            raise DataError(f"{where}: {table.path} has a {TRANSLATION_COLUMN!r} column (the "
                            "Hugging Face layout): set data.source_lang and data.target_lang")
        sources, targets = [], []
        for i, value in enumerate(frame[TRANSLATION_COLUMN]):
            if not isinstance(value, dict):
                raise DataError(f"{table.at(i)}: {TRANSLATION_COLUMN!r} holds "
                                f"{type(value).__name__}, expected {{language: text}}")
            missing = [lang for lang in (data.source_lang, data.target_lang) if lang not in value]
            if missing:
                raise DataError(f"{table.at(i)}: {TRANSLATION_COLUMN!r} has no "
                                f"{missing[0]!r} text (languages there: "
                                f"{', '.join(map(str, value))}); check data.source_lang and "
                                "data.target_lang")
            sources.append(value[data.source_lang])
            targets.append(value[data.target_lang])
    else:
        columns = (data.source_column or "source", data.target_column or "target")
        for name, column in zip(("source_column", "target_column"), columns):
            if column not in frame.columns:
                raise DataError(f"data.{name}: {column!r} not found in {where} {table.path}; "
                                f"columns present: {present}")
        sources, targets = list(frame[columns[0]]), list(frame[columns[1]])
    return _screen(sources, targets, places, where, data.drop_bad_pairs, str(table.path))


def read_pairs(spec: Any, data: DataSettings, where: str) -> Pairs:
    """The pairs a `data.train_file` or `data.eval_file` names, in file order."""
    files = text_files(spec, data.source_lang, data.target_lang, where)
    if files is not None:
        return read_text_pairs(files, where, data.drop_bad_pairs)
    return read_table_pairs(str(spec), data, where)


def subset(pairs: Pairs, size: int | None, seed: int, first: bool = False) -> Pairs:
    """`size` pairs: the first ones (`first`: a published test set's prefix, the same
    sentences a paper scores), else a fixed random subset for `seed`, in file order (the
    subset rule of every task, `subset_indices`)."""
    from raytune_ft.tasks._base import subset_indices

    if size is None or size >= len(pairs):
        return pairs
    keep = range(size) if first else subset_indices(len(pairs), size, seed)
    return Pairs([pairs.sources[i] for i in keep], [pairs.targets[i] for i in keep],
                 pairs.where, pairs.dropped, pairs.first_dropped)
