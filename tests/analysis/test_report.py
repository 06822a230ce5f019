"""write_report: every section renders, offline, and a headless browser runs it cleanly."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from raytune_ft.analysis import SECTION_IDS, write_report
from raytune_ft.analysis.__main__ import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1400,3000",
]


def _confirm(exp) -> None:
    rows = [
        (rank, f"t{rank}", seed, 0.8 + 0.01 * rank + 0.002 * seed)
        for rank in (1, 2)
        for seed in (0, 1, 2)
    ]
    df = pd.DataFrame(rows, columns=["config_rank", "trial_id", "seed", "metric"])
    (exp / "analysis").mkdir(exist_ok=True)
    df.to_parquet(exp / "analysis" / "confirm.parquet")


def test_report_has_every_section_and_no_network(copy_experiment):
    exp = copy_experiment("pbt")
    _confirm(exp)
    path = write_report(exp)
    assert path == exp / "analysis" / "report.html"
    text = path.read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in text
    assert 'id="pbt-schedules-plot"' in text and 'id="confirmation-plot"' in text
    assert "0.812" in text  # mean of rank 2 over seeds 0..2
    assert not re.search(r"""<script[^>]+src=|<link[^>]+href=["']?https?:""", text)


def test_report_without_pbt_or_confirm_still_has_sections(experiments, tmp_path):
    path = write_report(experiments["asha"], tmp_path / "r.html")
    text = path.read_text()
    assert all(f'<section id="{sid}">' in text for sid in SECTION_IDS)
    assert "No PBT exploits" in text and "confirm.parquet" in text
    assert 'type="log"' in text or '"type":"log"' in text  # learning_rate on a log axis


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(copy_experiment, tmp_path):
    exp = copy_experiment("pbt")
    _confirm(exp)
    path = write_report(exp)
    profile = tmp_path / "profile"
    shot = tmp_path / "report.png"
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*base, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=60
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom.stdout
    assert dom.stdout.count('class="plot-container plotly"') >= 6  # plotly drew the figures
    shotrun = subprocess.run(
        [*base, f"--screenshot={shot}", path.as_uri()], capture_output=True, text=True, timeout=60
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
    for log in (dom.stderr, shotrun.stderr):
        bad = [
            x
            for x in log.splitlines()
            if "Uncaught" in x or re.search(r":(ERROR|WARNING):CONSOLE", x)
        ]
        assert not bad, bad


def test_cli(experiments, tmp_path, capsys):
    assert main(["compare", str(experiments["asha"]), "--top", "2", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["analyze", str(experiments["asha"]), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "trials.parquet" in out and "learning_rate" in out
    assert main(["report", str(experiments["restored"]), "--out", str(tmp_path / "r.html")]) == 0
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raytune_ft.analysis",
            "compare",
            str(experiments["asha"]),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("[")


def test_export_with_report_parses_the_experiment_once(copy_experiment, tmp_path, monkeypatch):
    from raytune_ft.analysis import _report, export_experiment, export_with_report

    exp = copy_experiment("pbt")
    parsed = []
    load = _report.load_experiment
    monkeypatch.setattr(_report, "load_experiment", lambda d: parsed.append(d) or load(d))
    monkeypatch.setattr(_report, "read_tables", lambda d: pytest.fail("parsed a second time"))
    path = export_with_report(exp)
    assert len(parsed) == 1
    text = path.read_text()
    assert all(f'<section id="{sid}">' in text for sid in SECTION_IDS)
    separate = export_experiment(exp, tmp_path / "separate")
    for name, written in separate.items():
        pd.testing.assert_frame_equal(pd.read_parquet(exp / "analysis" / f"{name}.parquet"),
                                      pd.read_parquet(written))
