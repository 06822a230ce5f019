"""Tests only: make the trial whose train.seed is $RAYTUNE_FT_TEST_FAIL_SEED raise.

A folder holding this file, put on PYTHONPATH, makes every Python process started with that
environment import it at startup (`site` imports `sitecustomize`): the `raytune-ft` CLI run
as a subprocess, a local Ray's workers (they inherit the environment of the process that
started Ray), and so the trials. With the variable set, it patches
`FineTuneLoop.run_interval` as soon as `raytune_ft.training.loop` is imported, so that trial
raises at its first iteration, before any training; without it, it does nothing. The
product code carries no hook: tests/support.py `fault_hook_env` sets both variables.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

FAULT_HOOK = "RAYTUNE_FT_TEST_FAIL_SEED"
TARGET = "raytune_ft.training.loop"


def _patch(module) -> None:
    run_interval = module.FineTuneLoop.run_interval

    def failing_run_interval(self):
        seed = os.environ.get(FAULT_HOOK)
        if seed == str(self.hp.seed):
            raise RuntimeError(f"fault hook {FAULT_HOOK}={seed}: this trial raises")
        return run_interval(self)

    module.FineTuneLoop.run_interval = failing_run_interval


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the patch."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _patch(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patch the loop when it is imported: importing it here would import torch into every
    process of the environment (Ray's own helpers included)."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module, once
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if os.environ.get(FAULT_HOOK):
    sys.meta_path.insert(0, _PatchOnImport())
