"""One mapping from errors to exit codes, used by `raytune-ft` and by
`python -m raytune_ft.analysis`."""

from __future__ import annotations

import pytest

from raytune_ft import cli
from raytune_ft.analysis.__main__ import main as analysis_main
from raytune_ft.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    ConfigError,
    ExperimentError,
    error_line,
    exit_code,
)


def test_errors_map_to_exit_codes_and_one_line():
    assert exit_code(ConfigError("x")) == EXIT_BAD_INPUT == 2
    assert exit_code(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
    assert exit_code(ValueError("a bug")) is None  # not the user's: a traceback
    assert error_line(ExperimentError("first\n  second\n")) == "error: first second"
    assert error_line(KeyboardInterrupt()) == "interrupted"


@pytest.mark.parametrize("main", [cli.main, analysis_main])
def test_both_command_lines_report_a_bad_directory_the_same_way(main, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["compare", str(missing)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (f"error: experiment directory {missing} does not "
                                       "exist\n")


@pytest.mark.parametrize("main", [cli.main, analysis_main])
def test_both_command_lines_report_ctrl_c_the_same_way(main, monkeypatch, capsys):
    from raytune_ft.analysis import __main__ as analysis_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis_cli, "compare", interrupted)
    assert main(["compare", "somewhere"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"
