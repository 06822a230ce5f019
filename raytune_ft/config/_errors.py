"""One line per validation error: the dotted path of the field, what was received and what is
allowed, for any settings model (the experiment, or one section of it).

Pydantic puts the tag of a discriminated union into an error's location
(`scheduler.asha.grace_period`); the line shows the path as the user wrote it
(`scheduler.grace_period`) and lists the fields of the component the tag chose, not of all.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError

from raytune_ft.config._space import did_you_mean


def one_line(error: ValidationError, root: type[BaseModel]) -> str:
    """The first error of `error`, raised validating `root`, as one line."""
    detail = error.errors()[0]
    loc = [str(p) for p in detail["loc"] if not str(p).startswith(("function-", "tagged-"))]
    path_parts, parent, field, chosen = _walk(root, loc)
    path = ".".join(path_parts)
    kind, message, value = detail["type"], detail["msg"], detail.get("input")
    if kind == "extra_forbidden":
        hint = did_you_mean(path_parts[-1], parent.model_fields) if parent else ""
        if parent is not None and not parent.model_fields:  # a switch: `true` or nothing
            section = ".".join(path_parts[:-1])
            return (f"{path}: unknown key; {section} takes no settings (`{section}: true` "
                    "switches it on)")
        allowed = f"; allowed: {', '.join(parent.model_fields)}" if parent else ""
        elsewhere = _elsewhere(path_parts[-1], chosen)
        return f"{path}: unknown key{elsewhere or hint}{allowed}"
    if kind == "missing":
        return f"{path}: required field is missing{_allowed(field)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        name, noun = _discriminator(field)
        tags = list(_tagged_members(field))
        if kind == "union_tag_not_found" and not isinstance(value, dict):
            example = f" (write {path}: {{{name}: {value}}})" if value in tags else ""
            return (f"{path}: must be a mapping with {name}: one of {', '.join(tags)}; got "
                    f"{value!r}{example}")
        if kind == "union_tag_not_found":
            return f"{path}.{name}: required; allowed: {', '.join(tags)}"
        given = detail["ctx"]["tag"]
        return (f"{path}.{name}: {given!r} is not a {noun}{did_you_mean(given, tags)}; "
                f"allowed: {', '.join(tags)}")
    if kind == "literal_error" and isinstance(value, str):
        allowed = re.findall(r"'([^']*)'", str(detail.get("ctx", {}).get("expected", "")))
        return f"{path}: {message} (got {value!r}){did_you_mean(value, allowed)}"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        first = message.split()[0]
        names_its_field = "." in first or first.endswith(":")
        return message if names_its_field or not path else f"{path}: {message}"
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


def _walk(root: type[BaseModel], loc: list[str]
          ) -> tuple[list[str], type[BaseModel] | None, Any, tuple | None]:
    """Follow `loc` from `root`: (the path as written, the model holding its last key, the
    annotation of that key, the last discriminated union passed: (its annotation, the tag
    chosen)). Tags of discriminated unions are read, not shown."""
    shown: list[str] = []
    parent: type[BaseModel] | None = None
    current: Any = root
    chosen = None
    for part in loc:
        current = _unwrap(current)
        members = _tagged_members(current)
        if members and part in members:  # the tag pydantic inserts: the chosen component
            chosen = (current, part, ".".join(shown))
            current = members[part]
            continue
        shown.append(part)
        if part.isdigit():  # an item of a list: the item's type
            args = get_args(current)
            current = args[0] if get_origin(current) is list and args else None
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
            if field is not None and field.metadata:  # Annotated[..., Discriminator]
                current = Annotated[(current, *field.metadata)]
        else:
            parent, current = None, None
    return shown, parent, current, chosen


def _elsewhere(key: str, chosen: tuple | None) -> str:
    """" for data.kind sequence_classification (read by data.kind token_classification)"
    where another member of the union passed has `key`, else ""."""
    if chosen is None:
        return ""
    union, tag, where = chosen
    others = [other for other, member in _tagged_members(union).items()
              if other != tag and key in member.model_fields]
    if not others:
        return ""
    name = f"{where}.{_discriminator(union)[0]}"
    return f" for {name} {tag} (read by {name} {others[0]})"


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X, `Annotated[X, validator]` -> X; a discriminated union and anything
    else as it is."""
    if get_origin(annotation) is Annotated and not _tagged_members(annotation):
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _tagged_members(annotation: Any) -> dict[str, Any]:
    """tag -> member class of a discriminated union (`Annotated[Union[...], Discriminator]`,
    members tagged with `Tag` or by a Literal discriminator field); {} for anything else."""
    if get_origin(annotation) is not Annotated:
        return {}
    union, *metadata = get_args(annotation)
    discriminator = next((m for m in metadata if isinstance(m, Discriminator)), None)
    if discriminator is None:
        return {}
    members = {}
    for member in get_args(union):
        tag = None
        if get_origin(member) is Annotated:
            member, *extra = get_args(member)
            tag = next((m.tag for m in extra if isinstance(m, Tag)), None)
        if tag is None and isinstance(discriminator.discriminator, str):
            field = member.model_fields[discriminator.discriminator]
            for value in get_args(field.annotation):
                members[value] = member
            continue
        members[tag] = member
    return members


def _discriminator(annotation: Any) -> tuple[str, str]:
    """The key a discriminated union is told apart by (`type`, `kind`), and what its
    members are (`scheduler`, `task`): `config.ComponentKind` knows both."""
    _, *metadata = get_args(annotation)
    chosen = next(m for m in metadata if isinstance(m, Discriminator)).discriminator
    if isinstance(chosen, str):
        return chosen, "registered name"
    return getattr(chosen, "field", "type"), getattr(chosen, "noun", "registered name")


def _allowed(annotation: Any) -> str:
    """"; allowed: max, min" for a field that takes one of fixed values, else ""."""
    if get_origin(annotation) is not Literal:
        return ""
    return f"; allowed: {', '.join(str(a) for a in get_args(annotation))}"
