"""GLUE readers on the real files, and tabular files: every row read, every mistake named."""

import json

import pandas as pd
import pytest

from raytune_ft.config import DataSettings
from raytune_ft.errors import DataError
from raytune_ft.schema import data_settings
from raytune_ft.tasks._tables import read_splits, sort_labels, subset


def test_mrpc_rows_bom_and_quotes(glue_dir):
    train, dev, labels = read_splits(data_settings(task="mrpc", path=str(glue_dir)))
    assert (len(train.labels), len(dev.labels)) == (3668, 408)
    assert labels == ["0", "1"]
    assert int(train.labels.sum()) == 2474 and int(dev.labels.sum()) == 279
    # The BOM is stripped (the label column is found) and quotes are literal text.
    assert any('"' in sentence for sentence in train.texts[0])
    assert len(train.texts) == 2


def test_sst2_rows_and_labels(glue_dir):
    train, dev, _ = read_splits(data_settings(task="sst2", path=str(glue_dir)))
    assert (len(train.labels), len(dev.labels)) == (67349, 872)
    assert int(train.labels.sum()) == 37569 and int(dev.labels.sum()) == 444
    assert len(train.texts) == 1


def test_environment_variable_points_at_the_glue_folder(glue_dir, monkeypatch):
    monkeypatch.setenv("RAYTUNE_FT_DATA_DIR", str(glue_dir))
    _, dev, _ = read_splits(data_settings(task="SST-2"))
    assert len(dev.labels) == 872


def test_subset_is_fixed_by_its_seed(glue_dir):
    train, _, _ = read_splits(data_settings(task="sst2", path=str(glue_dir)))
    a, b = subset(train, 100, 0), subset(train, 100, 0)
    assert a.texts == b.texts and len(a.labels) == 100
    assert subset(train, 100, 1).texts != a.texts


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_tabular_files_with_named_columns(tmp_path, suffix):
    frame = pd.DataFrame({"text": ["good film", "bad film", "fine"], "y": ["pos", "neg", "pos"]})
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    cfg = data_settings(train_file=str(path), eval_file=str(path), text_columns=["text"],
                     label_column="y")
    train, _, labels = read_splits(cfg)
    assert labels == ["neg", "pos"] and train.labels.tolist() == [1, 0, 1]


def test_missing_column_lists_the_columns_present(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"sentence": ["a"], "label": [1]}).to_csv(path, index=False)
    cfg = data_settings(train_file=str(path), eval_file=str(path), text_columns=["text"],
                     label_column="label")
    with pytest.raises(DataError, match="data.text_columns: 'text' not found; columns present "
                                        "in data.train_file: sentence, label"):
        read_splits(cfg)


def _files(tmp_path, train: str, dev: str | None = None, suffix=".tsv", text=("text",),
           label="label") -> DataSettings:
    """Write train (and a distinct eval) file from raw text and configure them."""
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"eval{suffix}").write_text(train if dev is None else dev)
    return data_settings(train_file=str(tmp_path / f"train{suffix}"),
                      eval_file=str(tmp_path / f"eval{suffix}"), text_columns=list(text),
                      label_column=label)


def test_tsv_quotes_are_text_not_syntax(tmp_path):
    rows = ['"Wow, what a film', "dull\"", '"ok" said nobody', "fine", '"', "meh"]
    body = "text\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(rows))
    train, _, labels = read_splits(_files(tmp_path, body))
    assert train.texts == [rows] and train.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert labels == ["0", "1"]


def test_csv_quotes_are_syntax(tmp_path):
    body = 'text,label\n"Wow, a film",1\n"He said ""no""",0\n"two\nlines",1\n'
    train, _, _ = read_splits(_files(tmp_path, body, suffix=".csv"))
    assert train.texts == [["Wow, a film", 'He said "no"', "two\nlines"]]
    assert train.labels.tolist() == [1, 0, 1]


def test_mrpc_train_tsv_as_a_custom_file(glue_dir):
    cfg = data_settings(train_file=str(glue_dir / "MRPC" / "train.tsv"),
                     eval_file=str(glue_dir / "MRPC" / "dev.tsv"),
                     text_columns=["#1 String", "#2 String"], label_column="Quality")
    train, dev, labels = read_splits(cfg)
    assert (len(train.labels), len(dev.labels)) == (3668, 408) and labels == ["0", "1"]
    assert int(train.labels.sum()) == 2474 and int(dev.labels.sum()) == 279
    glue, _, _ = read_splits(data_settings(task="mrpc", path=str(glue_dir)))
    assert train.texts == glue.texts


@pytest.mark.parametrize(("body", "line", "fields"), [
    ("text\tlabel\ngood\t1\nsplit\ttext\t0\nbad\t0\n", 3, 3),  # a tab inside a text
    ("text\tlabel\ngood\t1\nbad\t0\nno label here\n", 4, 1),  # a short row
])
def test_tsv_row_with_wrong_field_count_names_file_and_line(tmp_path, body, line, fields):
    with pytest.raises(DataError, match=rf"data.train_file: \S+train.tsv line {line}: "
                                        rf"{fields} fields?, the header has 2"):
        read_splits(_files(tmp_path, body, "text\tlabel\nok\t1\n"))


def _write(path, frame: pd.DataFrame) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not MISSING})
                                + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)


MISSING = object()  # a JSONL key left out of the object


@pytest.mark.parametrize(("suffix", "text", "label", "column", "place"), [
    (".csv", "", 1, "text", "line 3"),  # an empty cell
    (".csv", "b", None, "label", "line 3"),
    (".tsv", "b", None, "label", "line 3"),
    (".tsv", "   ", 0, "text", "line 3"),
    (".jsonl", None, 0, "text", "line 2"),  # null
    (".jsonl", "b", None, "label", "line 2"),
    (".jsonl", "b", MISSING, "label", "line 2"),  # no such key
    (".parquet", None, 0, "text", "row 2"),
    (".parquet", "b", float("nan"), "label", "row 2"),
])
def test_missing_text_or_label_is_refused(tmp_path, suffix, text, label, column, place):
    frame = pd.DataFrame({"text": ["a", text, "c"], "label": [1, label, 0]}, dtype=object)
    _write(tmp_path / f"train{suffix}", frame)
    _write(tmp_path / f"eval{suffix}", frame.iloc[[0, 2]])
    cfg = data_settings(train_file=str(tmp_path / f"train{suffix}"),
                     eval_file=str(tmp_path / f"eval{suffix}"), text_columns=["text"],
                     label_column="label")
    with pytest.raises(DataError, match=rf"data.train_file: \S+train{suffix} {place}: column "
                                        rf"'{column}' is empty or null \(1 row\(s\) in all\)"):
        read_splits(cfg)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_integer_valued_float_labels_are_the_integer_label(tmp_path, suffix):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1.0, 0.0, 1.0, 0.0]})
    _write(tmp_path / f"train{suffix}", frame)
    (tmp_path / "eval.csv").write_text("text,label\nx,1\ny,0\n")
    cfg = data_settings(train_file=str(tmp_path / f"train{suffix}"),
                     eval_file=str(tmp_path / "eval.csv"), text_columns=["text"],
                     label_column="label")
    train, dev, labels = read_splits(cfg)
    assert labels == ["0", "1"]
    assert train.labels.tolist() == [1, 0, 1, 0] and dev.labels.tolist() == [1, 0]


def test_integer_labels_sort_as_integers(tmp_path):
    body = "text,label\na,2\nb,10\nc,1\nd,-3\n"
    train, _, labels = read_splits(_files(tmp_path, body, suffix=".csv"))
    assert labels == ["-3", "1", "2", "10"] and train.labels.tolist() == [2, 3, 1, 0]
    assert sort_labels({"b", "10", "a"}) == ["10", "a", "b"]  # not all integers: as text


def test_distinct_eval_file_uses_the_train_label_ids(tmp_path):
    train_body = "text,label\na,pos\nb,neg\nc,mid\n"
    cfg = _files(tmp_path, train_body, "text,label\nx,pos\ny,pos\n", suffix=".csv")
    train, dev, labels = read_splits(cfg)
    assert labels == ["mid", "neg", "pos"]
    assert train.labels.tolist() == [2, 1, 0] and dev.labels.tolist() == [2, 2]
    assert dev.texts == [["x", "y"]]


def test_eval_label_train_never_had_is_named(tmp_path):
    cfg = _files(tmp_path, "text,label\na,pos\nb,neg\n", "text,label\nx,pos\ny,odd\nz,odd\n",
                 suffix=".csv")
    with pytest.raises(DataError, match=r"data.eval_file: \S+eval.csv line 3: label\(s\) 'odd' "
                                        r"in column 'label' are not in the label set "
                                        r"\['neg', 'pos'\]"):
        read_splits(cfg)




def test_float_formatted_integer_labels_in_csv_and_tsv_are_the_integer_label(tmp_path):
    # a float column written to CSV: "1.0" and "1" are one class, "10.0" sorts after "2.0"
    body = "text,label\na,1.0\nb,0\nc,10.00\nd,2.0\ne,1\n"
    train, dev, labels = read_splits(_files(tmp_path, body, "text,label\nx,1\ny,2.0\n",
                                            suffix=".csv"))
    assert labels == ["0", "1", "2", "10"]
    assert train.labels.tolist() == [1, 0, 3, 2, 1] and dev.labels.tolist() == [1, 2]
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    train, _, labels = read_splits(_files(tsv, "text\tlabel\na\t1.0\nb\t0.0\n", suffix=".tsv"))
    assert labels == ["0", "1"] and train.labels.tolist() == [1, 0]
    # text that only looks numeric in part stays text
    (tmp_path / "x").mkdir()
    _, _, labels = read_splits(_files(tmp_path / "x", "text,label\na,1.5\nb,v1.0\n",
                                      suffix=".csv"))
    assert labels == ["1.5", "v1.0"]
