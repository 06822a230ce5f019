"""Prepare an experiment (model, data, storage), run the `Tuner` on Ray, resume it, and run
preset configurations (replay, confirm).

`cluster` decides where Ray runs and whether one trial fits there; `summary` says what a run
came to; the experiment folder's files are `raytune_ft.experiment`'s.

Everything a user can get wrong is checked before Ray starts (`prepare`), so a typo costs
seconds, not a cluster start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.errors import ConfigError, ExperimentError, ResourceError
from raytune_ft.experiment import CONFIG_FILE, read_record, write_record
from raytune_ft.plan import TrialPlan
from raytune_ft.schema import ExperimentConfig, searches_model
from raytune_ft.storage import absolute, is_uri, write_text
from raytune_ft.tasks import DataBundle, example_count, task_for
from raytune_ft.training.lora import check_experiment as check_lora
from raytune_ft.training.model import (
    check_freeze_layers,
    has_batchnorm,
    head_origin,
    max_positions,
    resolve_model_path,
)
from raytune_ft.tuning.cluster import (
    check_client_storage,
    check_local_resources,
    check_resources,
    cluster_address,
    cluster_run_text,
    init_ray,
    joins_cluster,
    trial_resources,
    with_cluster_defaults,
)
from raytune_ft.tuning.summary import RunSummary, summarize_run

log = logging.getLogger(__name__)
_interrupted = threading.Event()  # set by the first Ctrl-C during `Tuner.fit`


@dataclass
class Prepared:
    config: ExperimentConfig
    model_path: str
    bundle: DataBundle
    experiment_dir: str  # <storage_path>/<name>, a local path or a URI
    plan: TrialPlan  # what every trial shares: budget, evaluations, batches
    warnings: list[str] = field(default_factory=list)  # for the run header
    about_data: list[tuple[str, str]] = field(default_factory=list)  # the task's header lines
    observations: Any = None  # earlier trials for the searcher (tuning.warm_start), or None
    models: Any = None  # model.name/max_length searched: tuning.model_data.ModelData
    cluster: str | None = None  # joining a cluster: the header's line on retries, checkpoints


def storage_root(config: ExperimentConfig) -> str:
    return absolute(config.run.storage_path)


def prepare(config: ExperimentConfig, overwrite: bool = False, resume: bool = False,
            address: str | None = None) -> Prepared:
    """Resolve the model, read and tokenize the data, check storage: no Ray needed.

    Without `address` the run is local, so resources are checked against this machine here;
    a cluster's nodes are only known after joining it (`check_resources`). Joining one, the
    run settings the experiment leaves unset take the cluster defaults (retries).
    """
    from raytune_ft.tracking import check_tracking

    if not resume:  # (resume_experiment checks it, with the fixes a resume can use)
        check_tracking(config.tracking)  # a store the tracker would refuse at its first log
    config, defaults = (config, {}) if resume else with_cluster_defaults(config, address)
    paths = None
    if searches_model(config):  # several models or lengths: each is checked, the first shown
        from raytune_ft.tuning.model_data import resolve_models

        paths = resolve_models(config)
        model_path = next(iter(paths.values()))
    else:
        model_path = resolve_model_path(config.model.name)
        limit = max_positions(model_path)
        if limit is not None and config.model.max_length > limit:
            raise ConfigError(f"model.max_length: {config.model.max_length} is above the "
                              f"model's position limit {limit}")
        if config.model.decoder_name is not None:  # one seq2seq folder from two encoders
            from raytune_ft.training.encoder_decoder import warm_start

            model_path = warm_start(model_path, resolve_model_path(config.model.decoder_name))
    _check_freeze_layers(config, paths or {config.model.name: model_path})
    check_client_storage(config, address)
    root = storage_root(config)
    experiment_dir = f"{root.rstrip('/')}/{config.name}"
    if not is_uri(root):
        _check_local_storage(Path(root), Path(experiment_dir), overwrite, resume)
    if cluster_address(address) is None:
        check_local_resources(config)
    task = task_for(config.data)
    models = None
    if paths is not None:  # once per distinct tokenizer and length
        from raytune_ft.tuning.model_data import tokenize_models

        models = tokenize_models(config, task, paths)
        bundle = next(iter(models.bundles.values()))
    else:
        bundle = task.load_data(config.data, model_path, config.model.max_length)
    task.check_metric(config.metric, bundle, config.data)
    for i, objective in enumerate(config.objectives or []):  # the first is config.metric
        try:
            task.check_metric(objective.metric, bundle, config.data)
        except ConfigError as error:
            raise ConfigError(f"objectives.{i}.metric: {str(error).removeprefix('metric: ')}"
                              ) from None
    lora = check_lora(task, model_path, bundle.label_names, config.train, config.space())
    for other in list(paths or [])[1:]:  # every searched model takes the adapters
        check_lora(task, paths[other], bundle.label_names, config.train, config.space())
    # a training split per tokenization: their sizes differ where samples are windows (QA)
    sizes = [len(b.train) for b in models.bundles.values()] if models else [len(bundle.train)]
    plan = config.plan(sizes)
    # each tokenization's own (words cut at one max_length are not at another)
    data_warnings = models.warnings(task, config.data) if models else \
        task.warnings(bundle, config.data)
    return Prepared(config, model_path, bundle, experiment_dir, plan,
                    _warnings(plan, bundle) + data_warnings
                    + _batchnorm_warnings(config, plan, model_path)
                    + _population_warnings(config),
                    (models.about_data(task) if models else task.describe(bundle))
                    + [_head_line(paths or {config.model.name: model_path},
                                  bundle.label_names)]
                    + lora + ([models.describe()] if models else []),
                    models=models,
                    cluster=cluster_run_text(config, defaults) if joins_cluster(address) else None)


def _head_line(paths: dict[str, str], label_names: list[str]) -> tuple[str, str]:
    """The header's `head` line: whether each model folder's own head is kept (rows by
    label name) or every trial starts a fresh one from its seed; from the config, once."""
    origins = {name: head_origin(path, label_names) for name, path in paths.items()}
    if len(origins) == 1:
        return "head", next(iter(origins.values()))
    return "head", "; ".join(f"{name}: {origin}" for name, origin in origins.items())


def _check_freeze_layers(config: ExperimentConfig, paths: dict[str, str]) -> None:
    """The largest freeze_layers a trial may use (fixed or searched) against every model a
    trial may train (`paths`: model.name -> path): one check for one model or a search."""
    domain = config.space().get("freeze_layers")
    largest = max(domain.values) if domain is not None else config.train.freeze_layers
    where = "search.freeze_layers" if domain is not None else "train.freeze_layers"
    check_freeze_layers(paths, largest, where)


def _warnings(plan: TrialPlan, bundle: DataBundle) -> list[str]:
    """What makes the run unlike what its settings suggest, whatever the task: a training
    split smaller than one batch (the task adds its own, e.g. a label with no example)."""
    largest = plan.largest_batch
    if len(bundle.train) < largest:
        return [f"the training split has {len(bundle.train)} examples, fewer than one "
                f"batch of {largest}: a step then repeats examples"]
    return []


def _population_warnings(config: ExperimentConfig) -> list[str]:
    """Under PBT/PB2 `run.max_concurrent_trials` bounds the population: a paused member is
    unfinished, so at most that many trials are alive to exchange weights."""
    from raytune_ft.schedulers import scheduler_spec

    limit, trials = config.run.max_concurrent_trials, config.run.num_samples
    if not limit or limit >= trials or not scheduler_spec(config).population:
        return []
    size = "one member: no trial has another to clone" if limit == 1 else f"{limit} members"
    return [f"run.max_concurrent_trials {limit} under {config.scheduler.type}: at most {limit} "
            f"of the {trials} trials are alive at once, so the population that exchanges "
            f"weights has {size}; to take turns in a larger population, leave it unset and "
            "let resources (gpus_per_trial) bound how many run"]


def _batchnorm_warnings(config: ExperimentConfig, plan: TrialPlan, model_path: str
                        ) -> list[str]:
    """BatchNorm that trains (`train.batchnorm: train`) computes its statistics per
    micro-batch: with gradient accumulation a step is not the big batch's gradient."""
    most = max(span.accumulation[1] for option in plan.batches for span in option.spans)
    domain = plan.space.get("batchnorm")
    trains = "train" in domain.values if domain is not None else \
        config.train.batchnorm == "train"
    workers = config.resources.workers_per_trial
    if (most <= 1 and workers == 1) or not trains or not has_batchnorm(model_path):
        return []
    if workers > 1:
        return [f"train.batchnorm 'train' with {workers} workers per trial: BatchNorm "
                "statistics come from each worker's micro-batches (its share of a batch, in "
                f"micro-batches of <= {plan.micro_batch[1]} samples), not from the effective "
                "batch, and the running statistics are rank 0's; 'eval' or 'frozen' make the "
                "step the big batch's"]
    return [f"train.batchnorm 'train' with gradient accumulation (up to {most} micro-batches "
            f"per step): BatchNorm statistics come from each micro-batch of <= "
            f"{plan.micro_batch[1]} samples (train.max_micro_batch), not from the effective "
            "batch; 'eval' or 'frozen' make accumulation exact"]


def _check_local_storage(root: Path, experiment: Path, overwrite: bool, resume: bool) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".raytune_ft_write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ResourceError(f"run.storage_path: {root} is not writable ({error.strerror})"
                            ) from None
    if experiment.exists() and any(experiment.iterdir()) and not (overwrite or resume):
        raise ExperimentError(f"name: experiment {experiment} already exists; use "
                              f"`raytune-ft resume {experiment}` to continue it or --overwrite "
                              "to replace it")


def tune_settings(config: ExperimentConfig, experiment_dir: str, plan: TrialPlan,
                  scheduler=None):
    """The `TuneConfig` and `RunConfig` raytune_ft runs with, for any trainable.

    `build_tuner` uses it; benchmarks reuse it to drive a stand-in trainable the same way.
    `scheduler`: a Ray Tune scheduler instead of the experiment's (replay, confirm). Either
    is saved with the experiment's snapshots, so `resume` continues it (`scheduler_state`).
    """
    from ray import tune

    from raytune_ft.schedulers import build_scheduler
    from raytune_ft.tracking import tracking_callbacks
    from raytune_ft.tuning.scheduler_state import resumable
    from raytune_ft.tuning.search import build_search_alg
    from raytune_ft.tuning.tune_logs import result_loggers

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # ours replace Ray's defaults

    root, name = experiment_dir.rsplit("/", 1)
    iterations = plan.iterations
    scheduler, scheduler_state = resumable(scheduler if scheduler is not None
                                           else build_scheduler(config.scheduler, plan))
    run_config = tune.RunConfig(
        name=name, storage_path=root, verbose=config.run.verbose,
        # Tune ends a trial at its last iteration itself: HyperBand would otherwise keep it
        # PAUSED until its bracket fills, and PBT could exploit its final result and train
        # its last interval again (ray-project/ray#11499).
        stop={"training_iteration": iterations},
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(config)),
        failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
        callbacks=[*result_loggers(), _sigint_watch(), scheduler_state,
                   *tracking_callbacks(config.tracking,
                                       tracking_run(config, experiment_dir, iterations))],
    )
    tune_config = tune.TuneConfig(metric=config.metric, mode=config.mode,
                                  num_samples=config.run.num_samples,
                                  time_budget_s=config.run.time_budget_s, reuse_actors=True)
    return searching(tune_config, config, build_search_alg(config), scheduler), run_config


def searching(tune_config, config: ExperimentConfig, search_alg=None, scheduler=None):
    """`tune_config` with `search_alg` and `scheduler` (where given) in place, limited to
    `run.max_concurrent_trials` trials at a time (`tuning.concurrency`): the search, its warm
    start, replay and confirm all set them here."""
    from raytune_ft.tuning.concurrency import limit_concurrency, limit_running

    limit, changes = config.run.max_concurrent_trials, {}
    if search_alg is not None:
        changes["search_alg"] = limit_concurrency(search_alg, limit)
    if scheduler is not None:
        changes["scheduler"] = limit_running(scheduler, limit)
    return dataclasses.replace(tune_config, max_concurrent_trials=None, **changes)


def tracking_run(config: ExperimentConfig, experiment_dir: str, iterations: int):
    """The run as the trackers see it (each gets its own settings on top)."""
    from raytune_ft.experiment import CONFIG_FILE
    from raytune_ft.tracking import TrackingContext

    return TrackingContext(None, config.name, config.metric, config.model_dump(mode="json"),
                           experiment_dir, f"{experiment_dir}/{CONFIG_FILE}", iterations)


def checkpoints_to_keep(config: ExperimentConfig) -> int | None:
    """How many checkpoints Ray keeps per trial (None: every one): the scheduler's answer
    (`Scheduler.checkpoints_to_keep`) to `run.checkpoints_to_keep`."""
    from raytune_ft.schedulers import scheduler_spec

    capped = "checkpoints_to_keep" in config.run.model_fields_set
    return scheduler_spec(config.scheduler).checkpoints_to_keep(
        config.scheduler, config.run.checkpoints_to_keep, capped)


def trainable_for(prepared: Prepared, presets: bool = False):
    """The trial function with its `TrialSetup` (the data in the object store, one copy per
    tokenization) and its resources.

    `presets`: the trials replay fixed configurations (replay, confirm) under a preset
    scheduler, so no population can rescue a diverged one: it ends.
    """
    from ray import tune

    from raytune_ft.tuning.model_data import ModelData
    from raytune_ft.tuning.trainable import train_trial
    from raytune_ft.tuning.trial import TrialSetup

    config = prepared.config
    data = prepared.models or ModelData.single(config.model.name, prepared.model_path,
                                               config.model.max_length, prepared.bundle)
    setup = TrialSetup(config, prepared.plan, data.to_object_store(), presets)
    return tune.with_resources(tune.with_parameters(train_trial, setup=setup),
                               trial_placement(config))


def trial_placement(config: ExperimentConfig):
    """One bundle per worker of a trial (the first is the trial function's own)."""
    from ray import tune

    bundle = {k: v for k, v in trial_resources(config).items() if v}
    strategy = "SPREAD" if config.resources.placement == "spread" else "PACK"
    return tune.PlacementGroupFactory([bundle] * config.resources.workers_per_trial,
                                      strategy=strategy)


def build_tuner(prepared: Prepared, restore: bool = False):
    from ray import tune

    from raytune_ft.tuning.search import param_space

    config = prepared.config
    trainable = trainable_for(prepared)
    if restore:
        return restore_tuner(prepared.experiment_dir, trainable)
    tune_config, run_config = tune_settings(config, prepared.experiment_dir, prepared.plan)
    tune_config, run_config = search_settings(config, prepared.experiment_dir, tune_config,
                                              run_config, prepared.observations)
    return tune.Tuner(trainable, param_space=param_space(prepared.plan),
                      tune_config=tune_config, run_config=run_config)


def restore_tuner(experiment_dir: str, trainable):
    """The interrupted experiment's `Tuner`, with what `tune_settings` gave it: unfinished
    and errored trials continue from their last checkpoint, the scheduler from its last
    snapshot (`scheduler_state`), the searcher and the trackers from theirs."""
    from ray import tune

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # the restored run has ours
    return tune.Tuner.restore(experiment_dir, trainable, resume_unfinished=True,
                              resume_errored=True)


def search_settings(config: ExperimentConfig, experiment_dir: str, tune_config, run_config,
                    observations=None):
    """A search's own settings, which preset runs (replay, confirm) do without: the
    searcher warm-started with `observations` (earlier trials), and the `run.stop` rules."""
    from raytune_ft.tuning.search import build_search_alg
    from raytune_ft.tuning.stopping import SearchStopper

    if observations is not None:
        tune_config = searching(tune_config, config, build_search_alg(config, observations))
    if config.run.stop.any:
        stopper = SearchStopper(config, run_config.stop["training_iteration"], experiment_dir)
        run_config = dataclasses.replace(run_config, stop=stopper,
                                         callbacks=[*run_config.callbacks, stopper])
    return tune_config, run_config


@dataclass
class Outcome:
    """A finished (or interrupted) `Tuner.fit`."""

    results: Any  # Tune's ResultGrid
    prepared: Prepared
    interrupted: bool  # Ctrl-C stopped the run; `raytune-ft resume` continues it

    def summary(self) -> RunSummary:
        """What the run came to (the CLI prints it), once the analysis export is written and
        the trackers have it (MLflow's parent run: the tables and report.html)."""
        summary = summarize_run(self.results, self.prepared.experiment_dir,
                                self.prepared.config, self.interrupted)
        summary.not_logged = finish_trackers(self.prepared, summary)
        return summary


def finish_trackers(prepared: Prepared, summary: RunSummary) -> list[str]:
    """The trackers' end-of-run step; what they could not log, one line per tracker."""
    from raytune_ft.experiment import ANALYSIS_DIR
    from raytune_ft.tracking import End, finish_tracking

    config = prepared.config
    if not config.tracking.enabled():
        return []
    local = not is_uri(prepared.experiment_dir) and summary.report is not None
    best = summary.best
    end = End(Path(prepared.experiment_dir, ANALYSIS_DIR) if local else None,
              (best.metric, best.value) if best is not None else None, summary.interrupted)
    run = tracking_run(config, prepared.experiment_dir, prepared.plan.iterations)
    return finish_tracking(config.tracking, run, end)


def fit_tuner(tuner) -> tuple[Any, bool]:
    """`tuner.fit()`, noting whether a Ctrl-C (SIGINT) cut it short.

    Tune 2.60 catches the first SIGINT itself (unless TUNE_DISABLE_SIGINT_HANDLER=1): it saves
    the experiment state and returns a normal ResultGrid, so the result alone cannot tell an
    interrupted run from a finished one. `_SigintWatch` wraps Tune's handler to record it.
    A second SIGINT raises KeyboardInterrupt, which the CLI reports the same way.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    _interrupted.clear()
    try:
        return tuner.fit(), _interrupted.is_set()
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)  # Tune leaves its own handler installed


def watch_sigint() -> None:
    """Record a SIGINT, then let the handler in force (Tune's, once fit has started) act."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        _interrupted.set()
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _sigint_watch():
    """A Tune callback whose `setup` runs after Tune has installed its SIGINT handler."""
    from ray import tune

    class SigintWatch(tune.Callback):
        # Pickled by value into the experiment (tuner.pkl); a resumed run uses that copy,
        # so the method looks up this module when it runs rather than closing over it.
        def setup(self, **info):
            from raytune_ft.tuning import runner

            runner.watch_sigint()

    return SigintWatch()


def recorded_config(config: ExperimentConfig) -> ExperimentConfig:
    """`config` as the record keeps it: its local data paths absolute (read from the
    working directory of the run), so confirm, resume and export find the same files from
    any directory."""
    return config.model_copy(update={"data": config.data.with_paths(absolute)})


def write_experiment_record(prepared: Prepared) -> None:
    """Save the validated config beside Ray's files, with what `prepare` derived (the trial
    plan among it): analysis, resume, confirm and export read it."""
    write_record(prepared.experiment_dir, recorded_config(prepared.config), {
        "budget_samples": prepared.plan.budget.total_samples,
        "model_path": prepared.model_path,
        "label_names": prepared.bundle.label_names,
        "train_samples": len(prepared.bundle.train),  # the first encoding's, as the budget
        "eval_samples": len(prepared.bundle.eval),
        "train_examples": example_count(prepared.bundle.train),  # every encoding's
        "eval_examples": example_count(prepared.bundle.eval),
        "plan": prepared.plan.record(),
        **({"warm_start": prepared.observations.record()}
           if prepared.observations is not None else {}),
        **({"model_paths": prepared.models.paths} if prepared.models is not None else {}),
    })


def begin_run(prepared: Prepared, address: str | None, replace: bool) -> None:
    """Start or join Ray, check that one trial fits, and lay out the experiment folder
    (replacing an earlier run of the same name when `replace`): tune, replay and confirm."""
    init_ray(address, prepared.config)
    check_resources(prepared.config)
    if replace and not is_uri(prepared.experiment_dir):
        shutil.rmtree(prepared.experiment_dir, ignore_errors=True)
    write_experiment_record(prepared)


def run_experiment(prepared: Prepared, address: str | None = None,
                   overwrite: bool = False) -> RunSummary:
    """Start Ray, run every trial of a prepared experiment, export its analysis."""
    begin_run(prepared, address, replace=overwrite)
    results, interrupted = fit_tuner(build_tuner(prepared))
    return Outcome(results, prepared, interrupted).summary()


def resume_experiment(experiment_dir: str, address: str | None = None) -> RunSummary:
    """Continue an interrupted experiment (a local path or a storage URI).

    Unfinished and errored trials restart from their last checkpoint in storage, so any
    node can pick them up; finished trials are kept as they are.
    """
    from raytune_ft.tracking import check_tracking

    experiment_dir = absolute(experiment_dir).rstrip("/")
    config, record = read_record(experiment_dir)
    check_tracking(config.tracking, record=f"{experiment_dir}/{CONFIG_FILE}")
    prepared = prepare(config, resume=True, address=address)
    prepared.experiment_dir = experiment_dir
    _check_same_plan(record, prepared.plan, experiment_dir)
    init_ray(address, config)
    check_resources(config)
    results, interrupted = fit_tuner(build_tuner(prepared, restore=True))
    return Outcome(results, prepared, interrupted).summary()


def _check_same_plan(record: dict, plan: TrialPlan, experiment_dir: str) -> None:
    """The checkpoints of a resumed experiment count samples of the data it started with: a
    different training set (another budget or evaluation points) must not continue them."""
    saved = record.get("plan")
    if saved is None:  # written before the record held a plan
        return
    now = json.loads(json.dumps(plan.record()))
    if saved != now:
        changed = sorted(key for key in {*saved, *now} if saved.get(key) != now.get(key))
        raise ExperimentError(f"{experiment_dir}: the data or settings changed since the "
                              f"experiment started (trial plan: {', '.join(changed)} differ); "
                              "resume needs the same training data")


def run_presets(prepared: Prepared, points: list[dict], scheduler, address: str | None,
                files: dict[str, str] | None = None) -> Outcome:
    """Run each of `points` (a config each) as one trial under `scheduler`, in a fresh
    `prepared.experiment_dir` (an earlier run of that name goes): replay and confirm.

    `files`: name -> text, written into the folder once it is laid out.
    """
    from ray import tune

    begin_run(prepared, address, replace=True)
    for name, text in (files or {}).items():
        write_text(f"{prepared.experiment_dir}/{name}", text)
    space, tune_config, run_config = preset_settings(prepared.config, prepared.experiment_dir,
                                                     prepared.plan, points, scheduler)
    tuner = tune.Tuner(trainable_for(prepared, presets=True), param_space=space,
                       tune_config=tune_config, run_config=run_config)
    results, interrupted = fit_tuner(tuner)
    return Outcome(results, prepared, interrupted)


def preset_settings(config: ExperimentConfig, experiment_dir: str, plan: TrialPlan,
                    points: list[dict], scheduler):
    """The param space, `TuneConfig` and `RunConfig` of a preset run: one trial per point,
    in order, under `scheduler`, at most `run.max_concurrent_trials` at a time."""
    from ray.tune.search import BasicVariantGenerator

    tune_config, run_config = tune_settings(config, experiment_dir, plan, scheduler)
    tune_config = searching(dataclasses.replace(tune_config, num_samples=len(points)), config,
                            BasicVariantGenerator(points_to_evaluate=points))
    # Every key of a preset must be in the space; None marks "set by the preset".
    space = {key: None for point in points for key in point}
    return space, tune_config, run_config

