"""Analysis of an experiment on object storage: results are read there, analysis/ goes back.

A `SubTreeFileSystem` over a local folder stands in for S3: it is not a LocalFileSystem, so
the copy-and-upload path runs exactly as for s3:// or gs://.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.fs

from raytune_ft import storage
from raytune_ft.analysis.__main__ import main as analysis_main
from raytune_ft.experiment import ANALYSIS_DIR


def remote(monkeypatch, bucket: Path) -> list[str]:
    """`remote://<key>` resolves into `bucket`; returns the paths the analysis downloaded."""
    fs = pyarrow.fs.SubTreeFileSystem(str(bucket), pyarrow.fs.LocalFileSystem())
    monkeypatch.setattr(storage, "_resolve", lambda uri: (fs, uri.split("://", 1)[1]))
    downloaded: list[str] = []
    original = storage.download_results

    def recording(fs, root, local, skip):
        original(fs, root, local, skip)
        downloaded.extend(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())

    monkeypatch.setattr(storage, "download_results", recording)
    return downloaded


def test_analyze_a_uri_reads_results_without_checkpoints_and_uploads_analysis(
        copy_experiment, monkeypatch, capsys):
    experiment = copy_experiment("asha")
    assert list(experiment.glob("*/checkpoint_*/*")), "the fixture has checkpoints"
    downloaded = remote(monkeypatch, experiment.parent)

    assert analysis_main(["analyze", f"remote://{experiment.name}"]) == 0
    assert analysis_main(["report", f"remote://{experiment.name}"]) == 0

    assert downloaded and not any("checkpoint_" in path for path in downloaded)
    assert any(path.endswith("result.json") for path in downloaded)
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")  # uploaded back
    assert len(trials) == len([p for p in experiment.iterdir() if (p / "params.json").exists()])
    assert (experiment / "analysis" / "report.html").stat().st_size > 0


def test_local_paths_and_file_uris_are_used_in_place(tmp_path):
    with storage.local_experiment(str(tmp_path), ANALYSIS_DIR) as local:
        assert local == str(tmp_path)
    with storage.local_experiment(tmp_path.as_uri(), ANALYSIS_DIR) as local:
        assert local == str(tmp_path)


def test_text_round_trips_through_a_uri(tmp_path):
    uri = (tmp_path / "a" / "b" / "record.json").as_uri()
    storage.write_text(uri, '{"x": 1}')
    assert storage.read_text(uri) == '{"x": 1}'
    assert (tmp_path / "a" / "b" / "record.json").read_text() == '{"x": 1}'
