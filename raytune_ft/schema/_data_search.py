"""A search over the data settings a task's encoding depends on (`Task.tokenization_fields`;
question answering: `data.doc_stride`), searched like `model.max_length`: listed values only,
one encoding of the data per value. Here: the `data:` sections a trial can use, and the
check that each encodes at every length a trial can use."""

from __future__ import annotations

import itertools

from raytune_ft.config import DATA_SEARCH_PREFIX, DataSettings, Domain
from raytune_ft.tasks import task_for


def data_keys(search: dict) -> list[str]:
    """The searched `data.` keys, in the order written."""
    return [key for key in search if key.startswith(DATA_SEARCH_PREFIX)]


def data_options(data: DataSettings, space: dict[str, Domain]) -> list[DataSettings]:
    """Every `data:` a trial can use: the fixed `data` with each combination of the searched
    `data.` keys' values in the parsed `space`, in the order written (one when none is
    searched)."""
    keys = data_keys(space)
    if not keys:
        return [data]
    values = [list(dict.fromkeys(space[key].values)) for key in keys]
    fixed = data.model_dump()
    return [type(data).model_validate(
        {**fixed, **{k.removeprefix(DATA_SEARCH_PREFIX): v for k, v in zip(keys, combo)}})
        for combo in itertools.product(*values)]


def check_encodings(data: DataSettings, max_length: int, space: dict[str, Domain]) -> None:
    """Every data setting a trial can use must encode at every length it can use (the fixed
    `max_length`, or the searched ones); the task says what that needs, e.g. a stride below
    the length. A searched key is named so."""
    task = task_for(data)
    lengths = space["model.max_length"].values if "model.max_length" in space else [max_length]
    for settings in data_options(data, space):
        for length in lengths:
            try:
                task.check_encoding(settings, length)
            except ValueError as error:
                searched = str(error).split(":", 1)[0] in space
                raise ValueError(f"search.{error}" if searched else str(error)) from None
