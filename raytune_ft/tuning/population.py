"""The old home of `RescuePBT`, kept for the `tuner.pkl` of PBT experiments started before
the component split: `Tuner.restore` unpickles their scheduler by this module path. The
class lives in `raytune_ft.schedulers`; new code imports it from there."""

from __future__ import annotations

from raytune_ft.schedulers import RescuePBT

__all__ = ["RescuePBT"]
