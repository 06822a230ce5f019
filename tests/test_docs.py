"""The documentation a newcomer reads: the configuration reference is the schema's own (a
stale file fails here), every field says what it is, and the README stays a short page."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from raytune_ft.config import DataSettings
from raytune_ft.schema._reference import configuration_reference
from raytune_ft.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]


def test_the_checked_in_configuration_reference_is_the_schemas():
    checked_in = (REPO / "docs" / "configuration.md").read_text()
    assert checked_in == configuration_reference(), (
        "docs/configuration.md is stale: python -m raytune_ft.schema > docs/configuration.md")


def test_every_field_of_the_reference_has_a_description():
    rows = [line for line in configuration_reference().splitlines()
            if line.startswith("| `")]
    empty = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert rows and not empty, f"fields without a comment in the source: {empty}"


class ToyData(DataSettings):  # no docstring of its own
    kind: Literal["toy"] = "toy"


def test_a_task_section_without_a_docstring_is_introduced_by_its_module(monkeypatch):
    """Not by the docstring it inherits (DataSettings' says what every task has): by its
    module's, as a scheduler's section is."""
    monkeypatch.setitem(TASKS, "toy", SimpleNamespace(settings=ToyData))
    section = configuration_reference().split("## `data:` with `kind: toy`")[1]
    intro = section.strip().splitlines()[0]
    assert intro == "The documentation a newcomer reads: the configuration reference is the " \
        "schema's own (a stale file fails here), every field says what it is, and the README " \
        "stays a short page."


def test_the_readme_is_a_short_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)", readme):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
