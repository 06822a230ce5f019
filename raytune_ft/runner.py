"""Start or join Ray, check resources and storage, run the `Tuner`, resume.

Everything a user can get wrong is checked before Ray starts (`prepare`), so a typo costs
seconds, not a cluster start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import ExperimentConfig, PbtConfig, validate_config
from raytune_ft.data import DataBundle, build_bundle
from raytune_ft.errors import ConfigError, ExperimentError, ResourceError
from raytune_ft.model import load_tokenizer, max_positions, resolve_model_path
from raytune_ft.storage import is_uri, read_text, write_text

log = logging.getLogger(__name__)
CONFIG_FILE = "raytune_ft.json"  # the validated experiment, beside Ray's own files
_interrupted = threading.Event()  # set by the first Ctrl-C during `Tuner.fit`


@dataclass
class Prepared:
    config: ExperimentConfig
    model_path: str
    bundle: DataBundle
    experiment_dir: str  # <storage_path>/<name>, a local path or a URI


def storage_root(config: ExperimentConfig) -> str:
    path = config.run.storage_path
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def prepare(config: ExperimentConfig, overwrite: bool = False, resume: bool = False,
            address: str | None = None) -> Prepared:
    """Resolve the model, read and tokenize the data, check storage: no Ray needed.

    Without `address` the run is local, so resources are checked against this machine here;
    a cluster's nodes are only known after joining it (`check_resources`).
    """
    model_path = resolve_model_path(config.model.name)
    limit = max_positions(model_path)
    if limit is not None and config.model.max_length > limit:
        raise ConfigError(f"model.max_length: {config.model.max_length} is above the model's "
                          f"position limit {limit}")
    _check_client_storage(config, address)
    root = storage_root(config)
    experiment_dir = f"{root.rstrip('/')}/{config.name}"
    if not is_uri(root):
        _check_local_storage(Path(root), Path(experiment_dir), overwrite, resume)
    if cluster_address(address) is None:
        check_local_resources(config)
    tokenizer = load_tokenizer(model_path)
    bundle = build_bundle(config.data, tokenizer, config.model.max_length)
    if config.metric.startswith("eval_") and config.metric not in bundle.metrics:
        raise ConfigError(f"metric: {config.metric!r} is not reported for {bundle.task} "
                          f"({len(bundle.label_names)} labels); reported: "
                          f"{', '.join(bundle.metrics)}")
    return Prepared(config, model_path, bundle, experiment_dir)


def local_cpus() -> int:
    """The CPUs a local Ray instance gets (`init_ray` starts it with this many)."""
    return os.cpu_count() or 1


def check_local_resources(config: ExperimentConfig) -> None:
    """A local run: one trial must fit on this machine, checked before Ray starts."""
    import torch

    cpus, gpus = local_cpus(), torch.cuda.device_count()
    need = config.resources
    if need.cpus_per_trial > cpus:
        raise ResourceError(f"resources.cpus_per_trial: {need.cpus_per_trial:g} is more than "
                            f"this machine's {cpus} CPUs; allowed: at most {cpus}, or join a "
                            "cluster with --address")
    if need.gpus_per_trial > gpus:
        raise ResourceError(f"resources.gpus_per_trial: {need.gpus_per_trial:g} is more than "
                            f"this machine's {gpus} GPUs; allowed: at most {gpus}, or join a "
                            "cluster with --address")


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


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS (set for `ray job submit` drivers)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def is_ray_client(address: str | None) -> bool:
    """Ray Client (`ray://HOST:PORT`): this process stays a client and Tune's driver loop
    runs on the head, so Ray's files are written there, not on this machine."""
    address = cluster_address(address)
    return bool(address) and address.startswith("ray://")


def _check_client_storage(config: ExperimentConfig, address: str | None) -> None:
    if is_ray_client(address) and not is_uri(config.run.storage_path):
        raise ConfigError(f"run.storage_path: {config.run.storage_path} is a local path, but "
                          f"with --address {cluster_address(address)} (Ray Client) the head "
                          "writes the experiment; allowed: a URI this machine and the "
                          "cluster both reach (s3://..., gs://...)")


def init_ray(address: str | None, config: ExperimentConfig) -> None:
    """Join a cluster at `address`, or start a local instance bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs = dict(log_to_driver=True, configure_logging=False)
    address = cluster_address(address)
    if is_ray_client(address):
        _join_cluster(ray, address, {})  # a client: the server's own ray.init settings hold
    elif address:
        _join_cluster(ray, address, kwargs)
    else:
        # "local": a new instance sized as checked in `prepare`, never a stray `ray start`.
        # Ray 2.60 turns token authentication on for a new local instance unless
        # RAY_AUTH_MODE says otherwise. Setting the variable here would not do: Ray reads
        # its config when imported, and the driver would then connect without the token.
        if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
            log.warning("RAY_AUTH_MODE=%s: the local Ray instance runs without token "
                        "authentication", os.environ["RAY_AUTH_MODE"])
        ray.init(address="local", num_cpus=local_cpus(), _node_ip_address="127.0.0.1",
                 include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)


def _join_cluster(ray, address: str, kwargs: dict) -> None:
    """`ray.init(address)`, with one line that says how to pass the token when refused."""
    from ray.exceptions import AuthenticationError

    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    try:
        ray.init(address=address, **kwargs)
    except (AuthenticationError, ConnectionError) as error:
        if is_ray_client(address) and not isinstance(error, AuthenticationError):
            # The client retries for ~30 s; an unreachable port and a refused token look
            # the same from here.
            raise ResourceError(
                f"--address {address}: no Ray Client server accepted this driver; check that "
                "the head's client port is reachable (an SSH tunnel: docs/cluster.md) and "
                f"that the driver has the cluster's token (RAY_AUTH_MODE=token, now {mode}, "
                "and RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); the head's "
                "logs/ray_client_server.err says which") from None
        # A refused token surfaces as "Failed to connect" with the gRPC status underneath.
        if not isinstance(error, AuthenticationError) and "InvalidAuthToken" not in str(
                error.__cause__):
            raise
        raise ResourceError(
            f"--address {address}: the cluster refused this driver's authentication token; "
            f"it uses token authentication: set RAY_AUTH_MODE=token (now {mode}) and give "
            "the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
        ) from None


def trial_resources(config: ExperimentConfig) -> dict[str, float]:
    """What one trial asks Ray for, in Ray's resource names; fractions stay fractions."""
    res = config.resources
    return {"CPU": res.cpus_per_trial, "GPU": res.gpus_per_trial, **res.custom}


def check_resources(config: ExperimentConfig) -> None:
    """One trial must fit on some node, or the trial would wait forever.

    A cluster that autoscales (cluster.yaml: GPU workers from 0) may have no such node yet;
    then a node type the autoscaler can start must fit it.
    """
    import ray

    need = {k: v for k, v in trial_resources(config).items() if v}
    if ray.util.client.ray.is_connected():  # the cluster's state is read on the cluster
        nodes, node_types = ray.get(ray.remote(num_cpus=0)(_cluster_view).remote())
    else:
        nodes, node_types = _cluster_view()
    if any(_fits(need, node) for node in nodes):
        return
    if node_types is not None and (not node_types or any(_fits(need, t) for t in node_types)):
        log.warning("no node of the cluster fits a trial (%s) yet; trials wait for the "
                    "autoscaler to add one", need)
        return
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in need}
    raise ResourceError(f"resources: one trial needs {_describe(need)}, but none of the "
                        f"cluster's {len(nodes)} nodes has that (largest per resource: "
                        f"{_describe(largest)}) and no autoscaler can add such a node")


def _cluster_view() -> tuple[list[dict[str, float]], list[dict[str, float]] | None]:
    """The resources of the live nodes, and of the node types an autoscaler can add."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return nodes, _autoscaler_node_types()


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0) >= v for k, v in need.items())


def _describe(amounts: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in amounts.items())


def _autoscaler_node_types() -> list[dict[str, float]] | None:
    """Resources of the node types an autoscaler can start; [] if it runs but does not say
    (the cluster launcher's autoscaler); None when the cluster does not autoscale."""
    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return [dict(group.resources) for group in config.node_group_configs
                if group.max_count != 0]
    return [] if _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) else None


def tune_settings(config: ExperimentConfig, experiment_dir: str):
    """The `TuneConfig` and `RunConfig` raytune_ft runs with, for any trainable.

    `build_tuner` uses it; benchmarks reuse it to drive a stand-in trainable the same way.
    """
    from ray import tune

    from raytune_ft.search import build_scheduler, build_search_alg
    from raytune_ft.tune_logs import result_loggers

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # ours replace Ray's defaults

    root, name = experiment_dir.rsplit("/", 1)
    run_config = tune.RunConfig(
        name=name, storage_path=root, verbose=config.run.verbose,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(config)),
        failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
        callbacks=[*result_loggers(), _sigint_watch()],
    )
    tune_config = tune.TuneConfig(
        metric=config.metric, mode=config.mode, scheduler=build_scheduler(config),
        search_alg=build_search_alg(config), num_samples=config.run.num_samples,
        max_concurrent_trials=config.run.max_concurrent_trials,
        time_budget_s=config.run.time_budget_s, reuse_actors=True,
    )
    return tune_config, run_config


def checkpoints_to_keep(config: ExperimentConfig) -> int | None:
    """How many checkpoints Ray keeps per trial.

    PBT clones the checkpoint a donor wrote at its last perturbation point, which can be
    several iterations behind its newest one: under PBT every checkpoint is kept (None)
    unless the user sets a cap, and a cap is raised to cover two perturbation intervals.
    """
    keep = config.run.checkpoints_to_keep
    if not isinstance(config.scheduler, PbtConfig):
        return keep
    if "checkpoints_to_keep" not in config.run.model_fields_set:
        return None
    return max(keep, 2 * config.scheduler.perturbation_interval + 2)


def trainable_for(prepared: Prepared):
    """The trial function with the tokenized data in the object store and its resources."""
    from ray import tune

    from raytune_ft.trainable import train_trial

    config = prepared.config
    return tune.with_resources(
        tune.with_parameters(train_trial, bundle=prepared.bundle, experiment=config,
                             model_path=prepared.model_path),
        {"cpu": config.resources.cpus_per_trial, "gpu": config.resources.gpus_per_trial,
         **config.resources.custom},
    )


def build_tuner(prepared: Prepared, restore: bool = False):
    from ray import tune

    from raytune_ft.search import param_space

    config = prepared.config
    trainable = trainable_for(prepared)
    if restore:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # the restored run has ours
        return tune.Tuner.restore(prepared.experiment_dir, trainable, resume_unfinished=True,
                                  resume_errored=True)
    tune_config, run_config = tune_settings(config, prepared.experiment_dir)
    return tune.Tuner(trainable, param_space=param_space(config), tune_config=tune_config,
                      run_config=run_config)


@dataclass
class Outcome:
    """What `tune` and `resume` hand the CLI."""

    results: Any  # Tune's ResultGrid
    prepared: Prepared
    interrupted: bool  # Ctrl-C stopped the run; `raytune-ft resume` continues it


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
            from raytune_ft import runner

            runner.watch_sigint()

    return SigintWatch()


def write_experiment_record(prepared: Prepared) -> None:
    """Save the validated config beside Ray's files: analysis and resume read it."""
    record = prepared.config.model_dump(mode="json")
    record["budget_samples"] = round(prepared.config.train.max_epochs * len(prepared.bundle.train))
    record["model_path"] = prepared.model_path
    record["label_names"] = prepared.bundle.label_names
    record["train_samples"] = len(prepared.bundle.train)
    record["eval_samples"] = len(prepared.bundle.eval)
    write_text(f"{prepared.experiment_dir}/{CONFIG_FILE}", json.dumps(record, indent=1))


def read_experiment_record(experiment_dir: str) -> ExperimentConfig:
    path = f"{experiment_dir.rstrip('/')}/{CONFIG_FILE}"
    try:
        text = read_text(path)
    except (OSError, ValueError):  # pyarrow: FileNotFoundError; a bad URI: ArrowInvalid
        raise ExperimentError(f"{experiment_dir}: not a raytune_ft experiment ({CONFIG_FILE} "
                              "not found)") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExperimentError(f"{path}: not valid JSON ({error})") from None
    for key in ("budget_samples", "model_path", "label_names", "train_samples", "eval_samples"):
        record.pop(key, None)
    return validate_config(record, source=str(path))


def begin_run(prepared: Prepared, address: str | None, replace: bool) -> None:
    """Start or join Ray, check that one trial fits, and lay out the experiment folder
    (replacing an earlier run of the same name when `replace`): tune, replay and confirm."""
    init_ray(address, prepared.config)
    check_resources(prepared.config)
    if replace and not is_uri(prepared.experiment_dir):
        shutil.rmtree(prepared.experiment_dir, ignore_errors=True)
    write_experiment_record(prepared)


def run_experiment(prepared: Prepared, address: str | None = None,
                   overwrite: bool = False) -> Outcome:
    """Start Ray and run every trial of a prepared experiment."""
    begin_run(prepared, address, replace=overwrite)
    results, interrupted = fit_tuner(build_tuner(prepared))
    return Outcome(results, prepared, interrupted)


def resume_experiment(experiment_dir: str, address: str | None = None) -> Outcome:
    """Continue an interrupted experiment (a local path or a storage URI).

    Unfinished and errored trials restart from their last checkpoint in storage, so any
    node can pick them up; finished trials are kept as they are.
    """
    if not is_uri(experiment_dir):
        experiment_dir = str(Path(experiment_dir).expanduser().resolve())
    experiment_dir = experiment_dir.rstrip("/")
    config = read_experiment_record(experiment_dir)
    prepared = prepare(config, resume=True, address=address)
    prepared.experiment_dir = experiment_dir
    init_ray(address, config)
    check_resources(config)
    results, interrupted = fit_tuner(build_tuner(prepared, restore=True))
    return Outcome(results, prepared, interrupted)


def accumulation_steps(batch_size: int, max_micro_batch: int) -> int:
    return math.ceil(batch_size / max_micro_batch)
