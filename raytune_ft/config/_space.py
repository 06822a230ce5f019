"""The search-space syntax of an experiment's `search:` section, parsed without Ray.

`{loguniform: [a, b]}`, `{uniform: ...}`, `{quniform: [a, b, q]}`, `{randint: [a, b]}`,
`{choice: [...]}`, `{grid: [...]}` or a plain constant; `search.to_tune` turns a `Domain`
into Ray Tune's sampler.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "qloguniform", "randint", "choice", "grid")
# Distributions drawn on a log scale: PB2 models them in log10, plots use log axes.
LOG_SCALED = ("loguniform", "qloguniform")


class Domain(BaseModel):
    """One search dimension parsed from the YAML syntax."""

    model_config = ConfigDict(frozen=True)
    kind: str  # one of DISTRIBUTIONS, or "constant"
    args: tuple[Any, ...]

    @property
    def values(self) -> list[Any]:
        """Every value this dimension can take, for checks (ranges give their endpoints)."""
        return list(self.args)


def parse_domain(where: str, spec: Any) -> Domain:
    """Parse `{loguniform: [a, b]}`, `{choice: [...]}`, ... or a plain constant."""
    if not (isinstance(spec, dict) and len(spec) == 1):
        return Domain(kind="constant", args=(spec,))
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        hint = did_you_mean(kind, DISTRIBUTIONS)
        raise ValueError(f"{where}: unknown distribution {kind!r}{hint}; allowed: "
                         f"{', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: {kind} needs a non-empty list, got {args!r}")
        return Domain(kind=kind, args=tuple(args))
    size = 3 if kind.startswith("q") else 2
    if not isinstance(args, list) or len(args) != size or not all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
    ):
        shape = "[low, high, q]" if size == 3 else "[low, high]"
        raise ValueError(f"{where}: {kind} needs {shape} numbers, got {args!r}")
    low, high = args[0], args[1]
    if low >= high:
        raise ValueError(f"{where}: {kind} low {low} >= high {high}")
    if "log" in kind and low <= 0:
        raise ValueError(f"{where}: {kind} low {low} must be > 0")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"{where}: randint needs integers, got {args!r}")
    if size == 3:
        _check_quantized(where, kind, low, high, args[2])
    return Domain(kind=kind, args=tuple(args))


def _check_quantized(where: str, kind: str, low: float, high: float, q: float) -> None:
    """Ray refuses (at Tuner start) a quantized range whose ends are not multiples of q."""
    if q <= 0:
        raise ValueError(f"{where}: {kind} q {q} must be > 0")
    for name, bound in (("low", low), ("high", high)):
        if not math.isclose(bound / q, round(bound / q)):
            raise ValueError(f"{where}: {kind} {name} {bound} is not a multiple of q {q}")


def did_you_mean(word: str, options: Any) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
