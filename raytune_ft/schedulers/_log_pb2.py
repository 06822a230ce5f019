"""PB2 on a log10 scale for log-scaled keys. Imported by `pb2.build` only: it subclasses Ray's
PB2, so importing it imports Ray."""

from __future__ import annotations

import math

from ray.tune.schedulers.pb2 import PB2

from raytune_ft.schedulers._rescue import RescuePopulation


class LogScalePB2(RescuePopulation, PB2):
    """PB2 whose Gaussian process sees log-scaled keys (loguniform domains) as log10 values,
    with the rescue of diverged members and the exploit log of `schedulers._rescue`.

    Ray's PB2 normalises each bound linearly: on [1e-5, 1e-3] its proposals crowd the top
    decade. Here the bounds, the data the model fits and its proposals for `log_keys` are
    log10; trial configs, results and the PBT logs keep the linear values.
    """

    def __init__(self, *, hyperparam_bounds: dict, log_keys: tuple[str, ...] = (),
                 custom_explore_fn=None, **kwargs) -> None:
        self._log_keys = tuple(log_keys)
        self._after_explore = custom_explore_fn  # applied after the log10 values map back
        super().__init__(hyperparam_bounds=log_bounds(hyperparam_bounds, self._log_keys),
                         **kwargs)

    def _save_trial_state(self, state, time, result, trial):
        score = super()._save_trial_state(state, time, result, trial)
        last = self.data.index[-1]  # the row PB2 just appended from trial.config
        for key in self._log_keys:
            self.data.loc[last, key] = math.log10(self.data.loc[last, key])
        return score

    def _get_new_config(self, trial, trial_to_clone):
        rows = len(self.data)
        config, operations = super()._get_new_config(trial, trial_to_clone)
        proposed = len(self.data) > rows  # PB2 proposed (log10 values); else it copied
        if proposed:
            config = {**config, **{key: 10.0 ** float(config[key]) for key in self._log_keys}}
        if self._after_explore is not None:
            config = self._after_explore(config)
        if proposed:  # the model learns from what the trial runs: the clipped values
            final = [math.log10(config[k]) if k in self._log_keys else config[k]
                     for k in self._hyperparam_bounds_flat]
            self.data.loc[self.data.index[-1], list(self._hyperparam_bounds_flat)] = final
            self.current[-1] = final
        return config, operations


def log_bounds(bounds: dict[str, list[float]], log_keys: tuple[str, ...]) -> dict:
    """PB2 bounds with the log-scaled keys' [low, high] as log10."""
    return {key: [math.log10(low), math.log10(high)] if key in log_keys else [low, high]
            for key, (low, high) in bounds.items()}
