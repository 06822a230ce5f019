"""Where trials run: a new local Ray instance or a cluster joined by address, and whether
one trial fits there.

Local runs are checked against this machine before Ray starts; a cluster's nodes (and the
node types its autoscaler can add) are only known after joining it.
"""

from __future__ import annotations

import logging
import os

from raytune_ft.config import ExperimentConfig
from raytune_ft.errors import ConfigError, ResourceError, last_line
from raytune_ft.storage import is_uri

log = logging.getLogger(__name__)


def local_cpus() -> int:
    """The CPUs a local Ray instance gets (`init_ray` starts it with this many)."""
    return os.cpu_count() or 1


def check_local_resources(config: ExperimentConfig) -> None:
    """A local run: one trial (all its workers) must fit on this machine, checked before Ray
    starts."""
    import torch

    cpus, gpus = local_cpus(), torch.cuda.device_count()
    res = config.resources
    workers = res.workers_per_trial
    for name, per_worker, have, unit in (
            ("cpus", res.worker_cpus, cpus, "CPUs"), ("gpus", res.worker_gpus, gpus, "GPUs")):
        field = f"{name}_per_trial" if workers == 1 else f"{name}_per_worker"
        if workers * per_worker > have:
            group = "" if workers == 1 else f" x {workers} workers_per_trial"
            raise ResourceError(f"resources.{field}: {per_worker:g}{group} is more than this "
                                f"machine's {have} {unit}; allowed: at most {have} in all, or "
                                "join a cluster with --address")


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS (set for `ray job submit` drivers)."""
    return address or os.environ.get("RAY_ADDRESS") or None


# Where the experiment leaves them unset, a run that joins a cluster retries a failed trial
# (a lost node fails its trials) and checkpoints every iteration, so a retry repeats at most
# one; locally a failure is a bug to see (max_failures 0). Kept in the experiment record.
CLUSTER_RUN_DEFAULTS = {"max_failures": 2, "checkpoint_every": 1}


def with_cluster_defaults(config: ExperimentConfig, address: str | None
                          ) -> tuple[ExperimentConfig, dict[str, int]]:
    """`config` with CLUSTER_RUN_DEFAULTS for the `run` settings the user did not set when the
    run joins a cluster (`--address`, or RAY_ADDRESS under `ray job submit`), and those."""
    if not joins_cluster(address):
        return config, {}
    unset = {key: value for key, value in CLUSTER_RUN_DEFAULTS.items()
             if key not in config.run.model_fields_set}
    if not unset:
        return config, {}
    return config.model_copy(update={"run": config.run.model_copy(update=unset)}), unset


def cluster_run_text(config: ExperimentConfig, defaults: dict[str, int]) -> str:
    """The header's line about retries and checkpoints on a cluster (`defaults`: the
    settings CLUSTER_RUN_DEFAULTS filled in)."""
    from raytune_ft.tuning.schedulers import scheduler_spec

    run = config.run

    def source(key: str) -> str:
        return "cluster default" if key in defaults else "set in the experiment"

    retries = (f"a failed trial (a lost node) is retried {run.max_failures} times from its "
               f"last checkpoint" if run.max_failures else "a failed trial (a lost node) is "
               "not retried") + f" (run.max_failures, {source('max_failures')})"
    if scheduler_spec(config).checkpoint_every_iteration:
        return f"{retries}; {config.scheduler.type} checkpoints every iteration"
    every = run.checkpoint_every
    cadence = "every iteration" if every == 1 else \
        f"every {every} iterations, so a retry repeats up to {every - 1}"
    return f"{retries}; checkpoints {cadence} (run.checkpoint_every, {source('checkpoint_every')})"


def joins_cluster(address: str | None) -> bool:
    """The run joins a running cluster rather than starting Ray on this machine."""
    return cluster_address(address) not in (None, "local")


def is_ray_client(address: str | None) -> bool:
    """Ray Client (`ray://HOST:PORT`): this process stays a client and Tune's driver loop
    runs on the head, so Ray's files are written there, not on this machine."""
    address = cluster_address(address)
    return bool(address) and address.startswith("ray://")


def check_client_storage(config: ExperimentConfig, address: str | None) -> None:
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
        _join_through_client(ray, address)
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


CLIENT_ATTEMPTS = 2


def _join_through_client(ray, address: str) -> None:
    """`ray.init("ray://...")`, tried twice.

    Ray 2.60's client proxy now and then fails to start the per-driver server it forks
    ("SpecificServer startup failed" in the head's ray_client_server.err; 3 of 11
    connections on this machine), and the next connection works. An unreachable
    port and a refused token fail both times, after about 30 s each.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address)  # a client: the server's own ray.init settings hold
            return
        except (ConnectionError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "client server" not in str(error):
                raise
            ray.shutdown()
            if attempt < CLIENT_ATTEMPTS:
                log.warning("Ray Client connection to %s failed (%s); trying once more",
                            address, last_line(error))
    raise ResourceError(
        f"--address {address}: no Ray Client server accepted this driver; check that the "
        "head's client port is reachable (an SSH tunnel: docs/cluster.md) and that the "
        f"driver has the cluster's token (RAY_AUTH_MODE=token, now {mode}, and "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); the head's "
        "logs/ray_client_server.err says which")


def _join_cluster(ray, address: str, kwargs: dict) -> None:
    """`ray.init(address)`, with one line that says how to pass the token when refused."""
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, **kwargs)
    except (AuthenticationError, ConnectionError) as error:
        # A refused token surfaces as "Failed to connect" with the gRPC status underneath.
        if not isinstance(error, AuthenticationError) and "InvalidAuthToken" not in str(
                error.__cause__):
            raise
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ResourceError(
            f"--address {address}: the cluster refused this driver's authentication token; "
            f"it uses token authentication: set RAY_AUTH_MODE=token (now {mode}) and give "
            "the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
        ) from None


def trial_resources(config: ExperimentConfig) -> dict[str, float]:
    """What one worker of a trial asks Ray for (the whole trial when it has one worker), in
    Ray's resource names; fractions stay fractions."""
    res = config.resources
    return {"CPU": res.worker_cpus, "GPU": res.worker_gpus, **res.custom}


def check_resources(config: ExperimentConfig) -> None:
    """One trial must fit on the cluster, or it would wait forever: its one worker on some
    node; a data-parallel trial's workers each on some node and all of them at once.

    A cluster that autoscales (cluster.yaml: GPU workers from 0) may have no such node yet;
    then a node type the autoscaler can start must fit a worker.
    """
    import ray

    need = {k: v for k, v in trial_resources(config).items() if v}
    workers = config.resources.workers_per_trial
    if ray.util.client.ray.is_connected():  # the cluster's state is read on the cluster
        nodes, node_types = ray.get(ray.remote(num_cpus=0)(_cluster_view).remote())
    else:
        nodes, node_types = _cluster_view()
    if sum(_how_many_fit(need, node) for node in nodes) >= workers:
        return
    if node_types is not None and (not node_types or any(_fits(need, t) for t in node_types)):
        log.warning("the cluster's nodes do not fit a trial (%s%s) yet; trials wait for the "
                    "autoscaler to add nodes", _describe(need),
                    f" x {workers} workers" if workers > 1 else "")
        return
    largest = {k: max((n.get(k, 0) for n in nodes), default=0) for k in need}
    if workers > 1:
        fit = sum(_how_many_fit(need, node) for node in nodes)
        raise ResourceError(f"resources: one trial needs {workers} workers of "
                            f"{_describe(need)}, but the cluster's {len(nodes)} nodes hold "
                            f"{fit} such workers and no autoscaler can add nodes")
    raise ResourceError(f"resources: one trial needs {_describe(need)}, but none of the "
                        f"cluster's {len(nodes)} nodes has that (largest per resource: "
                        f"{_describe(largest)}) and no autoscaler can add such a node")


def _how_many_fit(need: dict[str, float], node: dict[str, float]) -> int:
    """Workers of `need` that fit on `node` side by side."""
    return min((int(node.get(k, 0) / v + 1e-9) for k, v in need.items()), default=0)


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
