"""Reading an experiment record written before each component owned its settings (#26).

`data/pre_split_pb2_record.json` is the `raytune_ft.json` the code of commit 0e31205 wrote
(`experiment.write_record`) for a PB2 experiment whose file set PBT-only fields, which the
shared PBT/PB2 section accepted and PB2 ignored:

    config = validate_config({
        "name": "pb2_old", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 3, "eval_every_epochs": 1},
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": {"type": "pb2", "mutations": ["learning_rate"],
                      "resample_probability": 0.5, "perturbation_factors": [1.5, 0.5],
                      "burn_in_period": 0}})
    write_record(folder, config, {"budget_samples": 201})
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from raytune_ft.errors import ConfigError
from raytune_ft.experiment import CONFIG_FILE, read_record
from raytune_ft.schema import validate_config, validate_record

RECORD = Path(__file__).parent / "data" / "pre_split_pb2_record.json"


def test_a_pre_split_pb2_record_with_pbt_fields_reads_as_the_run_it_was(tmp_path, caplog):
    shutil.copy(RECORD, tmp_path / CONFIG_FILE)
    with caplog.at_level(logging.WARNING, logger="raytune_ft.schema"):
        config, record = read_record(str(tmp_path))
    assert record["budget_samples"] == 201
    assert config.scheduler == validate_config({
        "name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 3, "eval_every_epochs": 1},
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": {"type": "pb2", "mutations": ["learning_rate"]}}).scheduler
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    # burn_in_period 0 is PBT's default: what the shared section wrote, dropped silently
    assert "scheduler.resample_probability=0.5, scheduler.perturbation_factors=[1.5, 0.5] " \
           "ignored: scheduler.type pb2 does not read it" in warnings[0]
    assert "burn_in_period" not in warnings[0]


def test_a_current_record_or_file_with_a_pbt_field_under_pb2_is_still_refused():
    """Only a record of the shared-section days is forgiven: one written since holds only
    its task's data fields, and an experiment file is checked as it always was."""
    settings = {"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                "train": {"max_epochs": 3, "eval_every_epochs": 1},
                "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
                "scheduler": {"type": "pb2", "mutations": ["learning_rate"],
                              "resample_probability": 0.5}}
    current = validate_config({**settings, "scheduler": {"type": "pb2",
                                                         "mutations": ["learning_rate"]}})
    record = current.model_dump(mode="json")
    record["scheduler"]["resample_probability"] = 0.5
    for refused in (lambda: validate_config(settings),
                    lambda: validate_record(record, "raytune_ft.json")):
        with pytest.raises(ConfigError, match="scheduler.resample_probability: unknown key"):
            refused()
