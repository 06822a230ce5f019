"""The configuration reference (docs/configuration.md), generated from the schema itself:
every section and field with its type, default, allowed values and the one-line comment
beside it in the source. `python -m raytune_ft.schema > docs/configuration.md` writes it; a
test fails when the checked-in file is stale."""

from __future__ import annotations

import inspect
import io
import re
import tokenize
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raytune_ft.config import (
    ModelConfig,
    PlateauConfig,
    ResourcesConfig,
    RunConfig,
    SearchAlgConfig,
    StopConfig,
    TrainConfig,
)
from raytune_ft.schedulers import SCHEDULERS
from raytune_ft.schema._experiment import ExperimentConfig
from raytune_ft.tasks import TASKS
from raytune_ft.tracking import TRACKERS

HEADER = """# Configuration reference

Every field of an experiment file, generated from the schema by
`python -m raytune_ft.schema > docs/configuration.md` (a test fails when this file is stale).
Each component's section lists its own fields only: `data:` those of the task `data.kind`
names, `scheduler:` those of `scheduler.type`, `tracking.<name>:` those of that tracker.
Any `train:` field can also be searched under `search:` (docs/search.md).
"""


def configuration_reference() -> str:
    """The whole reference as Markdown."""
    parts = [HEADER]
    parts.append(_table("Top level", ExperimentConfig, skip={
        "model", "data", "train", "scheduler", "search_alg", "resources", "run", "tracking"}))
    parts.append(_table("`model:`", ModelConfig))
    for name, task in TASKS.items():
        parts.append(_table(f"`data:` with `kind: {name}`", task.settings,
                            intro=_summary(_own_doc(task.settings))))
        for key, field in task.settings.model_fields.items():  # its own nested sections
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                parts.append(_table(f"`data.{key}:` with `kind: {name}`", field.annotation,
                                    intro=_summary(_own_doc(field.annotation))))
    parts.append(_table("`train:`", TrainConfig))
    for name, spec in SCHEDULERS.items():
        parts.append(_table(f"`scheduler:` with `type: {name}`", spec.settings,
                            intro=_summary(inspect.getmodule(spec.settings).__doc__)))
    parts.append(_table("`search_alg:`", SearchAlgConfig))
    parts.append(_table("`resources:`", ResourcesConfig))
    parts.append(_table("`run:`", RunConfig))
    parts.append(_table("`run.stop:`", StopConfig))
    parts.append(_table("`run.stop.plateau:`", PlateauConfig))
    for name, spec in TRACKERS.items():
        parts.append(_table(f"`tracking.{name}:`", spec.settings,
                            intro=_summary(inspect.getmodule(spec.callbacks).__doc__) +
                            f" Needs `pip install 'raytune-ft[{spec.extra}]'`; `true` "
                            "switches it on with these defaults."))
    return "\n".join(parts)


def _own_doc(cls: type) -> str | None:
    """A settings class's own docstring, else its module's (as scheduler sections read):
    never the docstring of the class it inherits from (`DataSettings` says what every task
    has, not what this one is)."""
    return cls.__dict__.get("__doc__") or inspect.getmodule(cls).__doc__


def _summary(doc: str | None) -> str:
    """The first sentence of a docstring, on one line."""
    doc = " ".join((doc or "").split())
    return doc.split(". ")[0].rstrip(".") + "." if doc else ""


def _table(title: str, model: type[BaseModel], skip: set[str] = frozenset(),
           intro: str = "") -> str:
    comments = field_comments(model)
    lines = [f"## {title}", ""]
    if intro:
        lines += [_escape(intro), ""]
    fields = {n: f for n, f in model.model_fields.items() if n not in skip}
    if not fields:
        return "\n".join(lines + ["No settings.", ""])
    lines += ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, field in fields.items():
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | "
                     f"{_allowed(field)} | {_escape(comments.get(name, ''))} |")
    return "\n".join(lines + [""])


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """field -> the comment beside it in the source (and the `#` lines continuing it),
    walking the classes it inherits from too."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        found.update(_comments_in(source))
    return found


def _comments_in(source: str) -> dict[str, str]:
    """Each field's comment: the one beside it and the `#` lines continuing it, else the
    block of `#` lines right above it."""
    comments: dict[str, str] = {}
    current, above = None, []
    for line in source.splitlines():
        stripped = line.strip()
        field = re.match(r"^    (\w+)\s*:", line)
        if field and not stripped.startswith(("def ", "@")):
            current = field.group(1)
            comment = _trailing_comment(line) or " ".join(above)
            if comment:
                comments[current] = comment
            above = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if current in comments and not above and re.match(r"#\s{2,}", stripped):
                comments[current] += " " + text  # a continuation, indented inside the #
            else:
                current = None
                above.append(text)
            continue
        current, above = None, []
    return comments


def _trailing_comment(line: str) -> str:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return ""
    return next((t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT),
                "")


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return "choice"
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None)) + \
            (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation)).replace("Settings", " settings")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`" if value not in (None, "") else "`null`" if value is None else "`''`"


def _allowed(field: FieldInfo) -> str:
    annotation = field.annotation
    for arg in (annotation, *get_args(annotation)):
        if get_origin(arg) is Literal:
            return ", ".join(f"`{v}`" for v in get_args(arg))
    bounds = []
    for meta in field.metadata:
        for key, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
                          ("min_length", "length >=")):
            if getattr(meta, key, None) is not None:
                bounds.append(f"{sign} {getattr(meta, key)}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            bounds.append(f"matches `{pattern}`")
    return ", ".join(bounds)


def _escape(text: str) -> str:
    """Table-safe: a `|` would end the cell, a `<name>` would be read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
