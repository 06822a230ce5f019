"""Scale out and survive faults: cluster.yaml, token authentication, node loss, resume, Jobs.

Everything runs on this one machine. A "multi-node" cluster is `ray.cluster_utils.Cluster`:
a head and two worker raylets in separate processes, sharing this machine's disk, so
"storage every node reaches" is a `file://` URI (Ray reads and writes it through pyarrow,
as it would s3://); no S3 bucket or cloud is involved.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from support import REPO, experiment_yaml

from raytune_ft import cli

EXE = Path(sys.executable).with_name("raytune-ft")
RAY = Path(sys.executable).with_name("ray")
INTERVAL = 16  # samples per iteration: 64 train samples x eval_every_epochs 0.25
ITERATIONS = 8  # max_epochs 2 / 0.25
SMALL = {"data": {"max_train_samples": 64, "max_eval_samples": 32},
         "train": {"max_epochs": 2, "eval_every_epochs": 0.25, "max_micro_batch": 16}}


def rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if (p / "params.json").is_file())


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session and whatever it started there."""
    for sig in (first, signal.SIGKILL):
        if proc.poll() is not None and sig == signal.SIGKILL:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind by the leader
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_rays_own_schema_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))  # merges Ray's AWS defaults, as `ray up`
    validate_config(prepared)

    assert raw["provider"]["type"] == "aws"
    head = raw["available_node_types"][raw["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = raw["available_node_types"]["gpu"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] >= 1
    spot = raw["available_node_types"]["gpu_spot"]["node_config"]["InstanceMarketOptions"]
    assert spot["MarketType"] == "spot"
    assert raw["idle_timeout_minutes"] > 0
    for node in raw["available_node_types"].values():
        assert "instance-profile/" in node["node_config"]["IamInstanceProfile"]["Arn"]


def test_cluster_yaml_opens_only_ssh_and_turns_token_auth_on_everywhere():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    # Ray adds the intra-cluster rule and SSH (22); nothing else may be opened.
    assert raw["provider"]["security_group"].get("IpPermissions", []) == []
    head_start = " ".join(raw["head_start_ray_commands"])
    worker_start = " ".join(raw["worker_start_ray_commands"])
    for start in (head_start, worker_start):
        assert "export RAY_AUTH_MODE=token" in start
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    # The token is the user's file, mounted on every node; none is committed.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(raw["setup_commands"])
    assert setup.index("torch") < setup.index("raytune_ft-")
    assert "RAY_AUTH_TOKEN=" not in (REPO / "cluster.yaml").read_text()


# --------------------------------------------------------------------------- addresses


def test_addresses_come_from_the_flag_then_ray_address(monkeypatch):
    from raytune_ft.tuning.cluster import cluster_address, is_ray_client

    assert cluster_address("auto") == "auto"
    assert cluster_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert is_ray_client("ray://10.0.0.5:10001") and not is_ray_client("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert cluster_address(None) == "ray://head:10001" and is_ray_client(None)
    assert cluster_address("auto") == "auto"  # the flag wins


def test_joining_a_cluster_retries_and_checkpoints_unless_the_experiment_says_otherwise(
        tmp_path, tiny_bert, glue_dir, capsys, monkeypatch):
    # A lost node fails its trials: with the local defaults (no retry) the quick job lost its
    # best trial with the node. validate shows what tune runs (no Ray is joined to show it).
    def header(run: dict, *flags: str) -> list[str]:
        path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "r",
                               **SMALL, run={"storage_path": str(tmp_path / "r"), **run})
        assert cli.main(["validate", str(path), *flags]) == cli.EXIT_OK
        return [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("cluster ")]

    assert header({}, "--address", "10.0.0.5:6379") == [
        "cluster      a failed trial (a lost node) is retried 2 times from its last checkpoint "
        "(run.max_failures, cluster default); checkpoints every iteration "
        "(run.checkpoint_every, cluster default)"]
    assert header({"max_failures": 0, "checkpoint_every": 4}, "--address", "auto") == [
        "cluster      a failed trial (a lost node) is not retried (run.max_failures, set in "
        "the experiment); checkpoints every 4 iterations, so a retry repeats up to 3 "
        "(run.checkpoint_every, set in the experiment)"]
    assert header({}) == []  # a local run keeps the local defaults
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # `ray job submit` joins this way
    assert "retried 2 times" in header({})[0]


class FlakyRay:
    """Stands in for `ray` in `_join_through_client`: `init` raises the queued errors."""

    def __init__(self, *errors: Exception):
        self.errors, self.calls = list(errors), []

    def init(self, address):
        self.calls.append(address)
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self):
        self.calls.append("shutdown")


def test_a_failed_ray_client_connection_is_tried_once_more():
    from raytune_ft.errors import ResourceError
    from raytune_ft.tuning.cluster import _join_through_client

    # Ray's proxy failed to start this driver's server once: the second try joins.
    ray = FlakyRay(RuntimeError("Starting Ray client server failed. See ..."))
    _join_through_client(ray, "ray://head:10001")
    assert ray.calls == ["ray://head:10001", "shutdown", "ray://head:10001"]
    # Unreachable (or refused) twice: one line naming the address, the tunnel and the token.
    ray = FlakyRay(*[ConnectionError("ray client connection timeout")] * 2)
    with pytest.raises(ResourceError, match=r"--address ray://head:10001: no Ray Client .*"
                                            r"tunnel.*RAY_AUTH_TOKEN"):
        _join_through_client(ray, "ray://head:10001")
    assert ray.calls.count("ray://head:10001") == 2
    with pytest.raises(RuntimeError, match="something else"):  # not a connection failure
        _join_through_client(FlakyRay(RuntimeError("something else")), "ray://head:10001")


def test_ray_client_with_a_local_storage_path_is_refused_before_any_work(
        tmp_path, tiny_bert, glue_dir, capsys):
    """Through Ray Client the head writes the experiment: a path on this machine's disk
    would split it between two machines, so only a URI both reach is allowed."""
    storage = tmp_path / "results"
    path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, storage)
    code = cli.main(["tune", str(path), "--address", "ray://127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("error: ") and "run.storage_path: " in err, err
    assert "Ray Client" in err
    assert "s3://" in err and len(err.splitlines()) == 1
    assert not storage.exists()


def test_fractional_gpus_and_custom_resources_reach_the_trial_unrounded(tiny_bert, glue_dir,
                                                                        tmp_path, monkeypatch):
    from ray import tune

    from raytune_ft.config import load_config
    from raytune_ft.tuning.cluster import trial_resources
    from raytune_ft.tuning.runner import Prepared, trainable_for

    path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, tmp_path / "results",
                           resources={"cpus_per_trial": 1.5, "gpus_per_trial": 0.25,
                                      "custom": {"trial_node": 0.5}})
    config = load_config(path)
    assert trial_resources(config) == {"CPU": 1.5, "GPU": 0.25, "trial_node": 0.5}
    # with_parameters would put the data in an object store; no Ray is needed to check this.
    monkeypatch.setattr(tune, "with_parameters", lambda trainable, **_: trainable)
    trainable = trainable_for(Prepared(config, str(tiny_bert), None, str(tmp_path)))
    bundle = trainable._resources.required_resources
    assert bundle == {"CPU": 1.5, "GPU": 0.25, "trial_node": 0.5}


# --------------------------------------------------------------------------- token auth

HEAD = """
import sys, ray
from raytune_ft.config import validate_config
from raytune_ft.tuning.cluster import init_ray
init_ray(None, validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"}}))
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # hold the instance until the test closes stdin
"""
DRIVER = """
import sys, ray
from raytune_ft.config import validate_config
from raytune_ft.errors import ResourceError
from raytune_ft.tuning.cluster import init_ray
try:
    init_ray(sys.argv[1], validate_config({"name": "x", "model": {"name": "m"},
                                           "data": {"task": "sst2"}}))
    print("JOINED", ray.cluster_resources()["CPU"])
except ResourceError as error:
    print("REFUSED", error)
"""


def test_a_driver_without_the_token_is_refused_by_a_local_instance(tmp_path):
    """A local instance started as `raytune-ft tune` starts it (cluster.init_ray, no address).

    Its GCS listens on the machine's network address, so the token is what keeps other
    users and hosts out. The token lives in ~/.ray/auth_token (Ray generates it there at
    the first local start) unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH give it.
    """
    base = {k: v for k, v in clean_env().items() if not k.startswith("RAY_AUTH")}
    base["RAY_gcs_server_port_wait_time_s"] = "3"  # a refused driver gives up after ~3 s
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=base, start_new_session=True)
    try:
        address = head.stdout.readline().strip()
        assert address, "the local instance did not start"
        empty_home = tmp_path / "home"  # no ~/.ray/auth_token there
        empty_home.mkdir()
        drivers = {
            "no token": {"HOME": str(empty_home)},
            "wrong token": {"HOME": str(empty_home), "RAY_AUTH_MODE": "token",
                            "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            "the token": {"RAY_AUTH_MODE": "token"},  # reads ~/.ray/auth_token, as the head
        }
        seen = {}
        for name, extra in drivers.items():
            done = subprocess.run([sys.executable, "-c", DRIVER, address], capture_output=True,
                                  text=True, env={**base, **extra}, timeout=120)
            seen[name] = done.stdout.strip() or done.stderr[-2000:]
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        finally:
            stop_group(head)
    assert seen["no token"].startswith("REFUSED"), seen
    assert "refused this driver's authentication token" in seen["no token"]
    assert "RAY_AUTH_MODE=token (now unset)" in seen["no token"]
    assert seen["wrong token"].startswith("REFUSED"), seen
    assert seen["the token"].startswith("JOINED"), seen


# --------------------------------------------------------------------------- node loss


@pytest.fixture
def three_nodes():
    """A head with no CPUs for trials and two workers with the custom resource trials ask for."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1, resources={"trial_node": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _remove_a_busy_worker(cluster, workers, experiment: str, outcome: dict) -> None:
    """Remove the worker node of a trial that has checkpointed and is mid-run.

    Trials report their pid; a trial process is a child of its node's raylet. The driver's
    own result.json (in the session's artifacts) is read: storage copies lag behind.
    """
    session = Path(cluster.head_node.get_session_dir_path())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "removed" not in outcome:
        for result in session.glob(f"artifacts/*/{experiment}/driver_artifacts/*/result.json"):
            reported = rows(result.parent)
            if not reported or not 2 <= reported[-1]["training_iteration"] <= 3:
                continue
            pid = reported[-1]["pid"]
            for node in workers:
                raylet = node.all_processes["raylet"][0].process.pid
                if pid in _children(raylet):
                    cluster.remove_node(node)
                    outcome.update(removed=result.parent.name, pid=pid,
                                   at=reported[-1]["training_iteration"])
                    return
        time.sleep(0.1)


def run_while_a_node_is_lost(tmp_path, tiny_bert, glue_dir, three_nodes, scheduler: dict,
                             name: str) -> tuple[Path, dict]:
    cluster, workers = three_nodes
    storage = tmp_path / "storage"
    path = experiment_yaml(
        tmp_path / "exp.yaml", tiny_bert, glue_dir, storage, name=name, **SMALL,
        metric="eval_loss", mode="min", scheduler=scheduler,
        search={"learning_rate": {"loguniform": [1e-4, 1e-3]}, "batch_size": 16},
        search_alg={"type": "random", "seed": 0},
        resources={"cpus_per_trial": 1, "custom": {"trial_node": 1}},
        run={"num_samples": 4, "storage_path": storage.as_uri(), "verbose": 0})
    outcome: dict = {}
    watcher = threading.Thread(target=_remove_a_busy_worker,
                               args=(cluster, workers, name, outcome), daemon=True)
    watcher.start()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # retries and checkpoints: the cluster defaults
        code = cli.main(["tune", str(path), "--address", cluster.address])
    watcher.join(timeout=5)
    assert code == cli.EXIT_OK, out.getvalue()[-3000:]
    assert "removed" in outcome, "no trial was mid-run on a worker to remove its node"
    assert "is retried 2 times from its last checkpoint (run.max_failures, cluster default)" \
        in out.getvalue()
    record = json.loads((storage / name / "raytune_ft.json").read_text())
    assert (record["run"]["max_failures"], record["run"]["checkpoint_every"]) == (2, 1)
    return storage / name, outcome


def check_the_lost_trials_continued(experiment: Path, outcome: dict,
                                    actors_move: bool = False) -> None:
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(experiment.as_uri()).trials
    assert len(trials) == 4
    # Every trial finished its budget or was stopped by the scheduler; none ended in error.
    assert {t.status for t in trials} == {"TERMINATED"}, [(t, t.status) for t in trials]
    failed = {Path(t.path).name for t in trials if t.run_metadata.num_failures}
    for trial in trials:
        reported = rows(experiment / Path(trial.path).name)
        assert all(r["samples_seen"] == INTERVAL * r["training_iteration"] for r in reported)
        # iteration 1 once: no trial, lost or not, started again from zero
        assert [r["training_iteration"] for r in reported].count(1) == 1, trial
    if actors_move:
        # Under PBT a reused actor runs whichever trial is unpaused, so the trial last seen
        # on the removed node need not be the one that was running there when it went.
        assert failed, "no trial recorded the lost node"
        return
    assert outcome["removed"] in failed, (outcome, failed)
    lost = rows(experiment / outcome["removed"])
    after = [r for r in lost if r["pid"] != outcome["pid"]]
    assert after, "the lost trial never ran again"
    # It went on from a checkpoint written before the node went, not from zero.
    assert 1 < after[0]["training_iteration"] <= outcome["at"] + 1, (outcome, after[0])
    assert after[0]["samples_seen"] > INTERVAL


def test_asha_survives_the_loss_of_a_worker_node(tmp_path, tiny_bert, glue_dir, three_nodes):
    # Rungs at iterations 4 and 8: the node is removed at iteration 2-3, before any stop.
    scheduler = {"type": "asha", "grace_period": 4, "reduction_factor": 2}
    experiment, outcome = run_while_a_node_is_lost(tmp_path, tiny_bert, glue_dir, three_nodes,
                                                   scheduler, "asha_node_loss")
    check_the_lost_trials_continued(experiment, outcome)
    lengths = [len({r["training_iteration"] for r in rows(d)}) for d in trial_dirs(experiment)]
    assert max(lengths) == ITERATIONS


@pytest.mark.slow
def test_pbt_survives_the_loss_of_a_worker_node(tmp_path, tiny_bert, glue_dir, three_nodes):
    # synch: after the loss one slot is left for a population of 4. Asynchronous PBT was
    # seen to livelock there: the one running trial kept cloning the stale iteration-2
    # checkpoint of a paused trial and the paused trials never got the slot.
    scheduler = {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25,
                 "synch": True, "mutations": ["learning_rate"]}
    experiment, outcome = run_while_a_node_is_lost(tmp_path, tiny_bert, glue_dir, three_nodes,
                                                   scheduler, "pbt_node_loss")
    check_the_lost_trials_continued(experiment, outcome, actors_move=True)
    assert all(rows(d)[-1]["training_iteration"] == ITERATIONS for d in trial_dirs(experiment))


# --------------------------------------------------------------------------- SIGKILL + resume


@pytest.mark.slow
def test_resume_finishes_an_experiment_whose_driver_was_killed(tmp_path, tiny_bert, glue_dir):
    import pandas as pd

    storage = tmp_path / "results"
    # 8 x more data than SMALL, so the run is still going when it is killed.
    interval = 8 * INTERVAL
    path = experiment_yaml(
        tmp_path / "exp.yaml", tiny_bert, glue_dir, storage, name="killed",
        data={"max_train_samples": 8 * SMALL["data"]["max_train_samples"],
              "max_eval_samples": 32}, train=SMALL["train"],
        metric="eval_loss", mode="min", search_alg={"type": "random", "seed": 0},
        scheduler={"type": "asha", "grace_period": 4, "reduction_factor": 2},
        run={"num_samples": 3, "storage_path": str(storage), "checkpoint_every": 1,
             "verbose": 0})
    experiment = storage / "killed"
    proc = subprocess.Popen([str(EXE), "tune", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=clean_env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (list(experiment.glob("experiment_state*.json"))
                   and list(experiment.glob("*/checkpoint_00000[2-9]/trainer_state.json"))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no snapshot and checkpoint within 180 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray's reaper ends its instance
        proc.wait(timeout=30)
    finally:
        stop_group(proc, signal.SIGKILL)
    unfinished = [d for d in trial_dirs(experiment)
                  if not rows(d) or rows(d)[-1]["training_iteration"] < ITERATIONS]
    assert unfinished, "every trial had finished before the kill"

    resumed = subprocess.run([str(EXE), "resume", str(experiment)], capture_output=True,
                             text=True, env=clean_env(), timeout=400)
    assert resumed.returncode == cli.EXIT_OK, resumed.stderr[-3000:]
    assert (experiment / "analysis" / "trials.parquet").is_file(), resumed.stdout[-2000:]

    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert len(trials) == 3 and set(trials["status"]) <= {"terminated", "stopped"}
    iterations = pd.read_parquet(experiment / "analysis" / "iterations.parquet")
    assert not iterations.duplicated(["trial_id", "iteration"]).any()
    for trial in trial_dirs(experiment):
        kept = {r["training_iteration"]: r for r in rows(trial)}  # dedupe: the last report
        assert sorted(kept) == list(range(1, len(kept) + 1)), trial
        seen = [kept[i]["samples_seen"] for i in sorted(kept)]
        assert seen == [interval * i for i in sorted(kept)]  # increasing, none restarted


# --------------------------------------------------------------------------- Ray Client


def _client_deps_missing() -> str | None:
    try:
        import grpc  # noqa: F401
    except ImportError as error:
        return f"Ray Client needs ray[client] (in raytune-ft[cluster]): {error}"
    return None


def start_head(env: dict[str, str], client_port: int, *extra: str
               ) -> tuple[subprocess.Popen, Path]:
    """`ray start --head --block` in its own session, as on a cluster's head node.

    Ray's socket paths live under --temp-dir and must stay under 108 bytes; the caller
    stops the head with `stop_group` and removes the temp dir.
    """
    ray_temp = Path(tempfile.mkdtemp(prefix="rth", dir="/tmp"))
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(free_port()),
         "--ray-client-server-port", str(client_port), "--temp-dir", str(ray_temp), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    return head, ray_temp


@pytest.mark.slow
@pytest.mark.skipif(_client_deps_missing() is not None, reason=str(_client_deps_missing()))
def test_tune_through_ray_client_writes_everything_to_shared_storage(tmp_path, tiny_bert,
                                                                      glue_dir):
    """`raytune-ft tune --address ray://HOST:PORT` against a token-authenticated head: Tune's
    loop runs on the head, trials on its workers, and the experiment, its record and its
    analysis all land in storage (a file:// URI here, as s3:// on a cloud cluster)."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = free_port()
    head, ray_temp = start_head(env, port, "--include-dashboard", "false")
    storage = tmp_path / "shared"
    path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, storage, name="client",
                           **SMALL, search_alg={"type": "random", "seed": 0},
                           run={"num_samples": 2, "storage_path": storage.as_uri(),
                                "verbose": 0})
    try:
        address = f"ray://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # the client server answers a few seconds after `ray start` returns
            assert head.poll() is None, head.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the Ray Client server did not come up"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        tuned = subprocess.run([str(EXE), "tune", str(path), "--address", address],
                               capture_output=True, text=True, env=env, timeout=400)
        no_token = subprocess.run(
            [str(EXE), "tune", str(path), "--address", address, "--overwrite"],
            capture_output=True, text=True, timeout=120,
            env={**clean_env(), "HOME": str(tmp_path)})
    finally:
        stop_group(head)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert tuned.returncode == cli.EXIT_OK, tuned.stdout[-2000:] + tuned.stderr[-3000:]
    assert "best         eval_accuracy=" in tuned.stdout
    experiment = storage / "client"
    assert (experiment / "raytune_ft.json").is_file()
    assert len(trial_dirs(experiment)) == 2
    for trial in trial_dirs(experiment):
        assert [r["samples_seen"] for r in rows(trial)] == [
            INTERVAL * i for i in range(1, ITERATIONS + 1)]
    assert (experiment / "analysis" / "trials.parquet").is_file(), tuned.stdout[-2000:]
    assert (experiment / "analysis" / "report.html").is_file()
    # the client server wants the token too: one line, exit 2
    assert no_token.returncode == cli.EXIT_BAD_INPUT, no_token.stderr[-3000:]
    assert no_token.stderr.strip().splitlines()[-1].startswith("error: --address ray://")


# --------------------------------------------------------------------------- Ray Jobs


def _dashboard_deps_missing() -> str | None:
    try:
        import aiohttp  # noqa: F401
        import ray.dashboard.modules.job.sdk  # noqa: F401
    except ImportError as error:
        return f"Ray Jobs needs ray[default] (raytune-ft[cluster]): {error}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_dashboard_deps_missing() is not None,
                    reason=str(_dashboard_deps_missing()))
def test_ray_job_submit_runs_an_experiment(tmp_path, tiny_bert, glue_dir):
    """`ray start --head` as on the cluster (token auth on, dashboard on loopback), then
    `ray job submit -- raytune-ft tune ...`. `ray start --block` holds every process of the
    head in its own session, so the test stops exactly those, never other Ray instances."""
    dashboard = free_port()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    head, ray_temp = start_head(env, free_port(), "--dashboard-port", str(dashboard),
                                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1")
    storage = tmp_path / "results"
    path = experiment_yaml(tmp_path / "exp.yaml", tiny_bert, glue_dir, storage, name="job",
                           **SMALL, search_alg={"type": "random", "seed": 0},
                           run={"num_samples": 2, "storage_path": str(storage), "verbose": 0})
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, head.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the dashboard did not come up in 120 s"
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without the token): it is up
            except OSError:
                time.sleep(0.5)
        submit = subprocess.run(
            [str(RAY), "job", "submit", "--address", url, "--submission-id", "raytune-ft-job",
             "--", str(EXE), "tune", str(path)],
            capture_output=True, text=True, env=env, timeout=400)
        status = subprocess.run([str(RAY), "job", "status", "--address", url,
                                 "raytune-ft-job"], capture_output=True, text=True, env=env,
                                timeout=60)
        no_token = subprocess.run(
            [str(RAY), "job", "list", "--address", url], capture_output=True, text=True,
            env={**clean_env(RAY_AUTH_MODE="token"), "HOME": str(tmp_path)}, timeout=60)
    finally:
        stop_group(head)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert "succeeded" in (status.stdout + status.stderr).lower(), \
        submit.stdout[-3000:] + submit.stderr
    assert "best         eval_accuracy=" in submit.stdout
    assert no_token.returncode != 0  # the Jobs API wants the token too
    experiment = storage / "job"
    assert len(trial_dirs(experiment)) == 2
    assert all(rows(d) for d in trial_dirs(experiment))
