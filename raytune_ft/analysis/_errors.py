"""The analysis package's error for bad arguments: a RaytuneFtError the CLI reports cleanly."""

from __future__ import annotations

from raytune_ft.errors import RaytuneFtError


class AnalysisArgumentError(RaytuneFtError, ValueError):
    """A bad argument to an analysis function: the message names the value and the rule."""
