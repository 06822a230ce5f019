"""The wrappers around every experiment's scheduler (`tuning.forwarding`) hand every call of
Tune's scheduler API to the scheduler they wrap, none answered by Tune's base class."""

from __future__ import annotations

import inspect

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler, TrialScheduler

from raytune_ft.tuning.concurrency import RunningLimit
from raytune_ft.tuning.forwarding import ForwardingScheduler
from raytune_ft.tuning.scheduler_state import Resumable


def test_every_scheduler_call_is_forwarded():
    api = {name for name, _ in inspect.getmembers(TrialScheduler)
           if not name.startswith("_") and name not in ("CONTINUE", "PAUSE", "STOP", "NOOP")}
    assert {"on_trial_add", "on_trial_result", "choose_trial_to_run", "metric"} <= api
    assert api <= set(vars(ForwardingScheduler)), api - set(vars(ForwardingScheduler))


def test_both_wrappers_reach_the_wrapped_scheduler():
    class Controller:  # what a scheduler calls of Tune's controller
        def __init__(self, trials):
            self.trials = trials

        def get_trials(self):
            return self.trials

        def get_live_trials(self):
            return self.trials

    hyperband = HyperBandScheduler(metric="eval_accuracy", mode="max", max_t=4,
                                   reduction_factor=2)
    wrapped = RunningLimit(Resumable(hyperband), 3)
    trials = [Trial("f", trial_id=f"t{i}", stub=True) for i in range(2)]
    controller = Controller(trials)
    for trial in trials:
        wrapped.on_trial_add(controller, trial)
    assert wrapped.metric == "eval_accuracy" and not wrapped.supports_buffered_results
    assert set(hyperband._trial_info) == set(trials)  # in its brackets
    assert wrapped.choose_trial_to_run(controller) is trials[0]
    trials[0].set_status(Trial.RUNNING)
    result = {"training_iteration": 1, "eval_accuracy": 0.5}
    assert wrapped.on_trial_result(controller, trials[0], result) == TrialScheduler.CONTINUE
    bracket = hyperband._trial_info[trials[0]][0]
    assert bracket._live_trials[trials[0]] is result  # its bracket holds the result
    assert wrapped._time_attr == "training_iteration"  # any other attribute is the inner's
    assert wrapped.debug_string().endswith("(at most 3 trials at once)")


def test_a_running_limit_pickled_before_the_forwarding_base_is_read():
    # tuner.pkl of an experiment started when RunningLimit held its scheduler as `scheduler`
    from ray import cloudpickle as pickle  # as Tune pickles it

    hyperband = HyperBandScheduler(metric="eval_accuracy", mode="max", max_t=4)
    old = RunningLimit.__new__(RunningLimit)
    old.__dict__.update(scheduler=Resumable(hyperband), limit=1, _seen=set(), _held=[])
    restored = pickle.loads(pickle.dumps(old))
    assert isinstance(restored.inner, Resumable) and restored.metric == "eval_accuracy"
    assert pickle.loads(pickle.dumps(RunningLimit(Resumable(hyperband), 2))).limit == 2
