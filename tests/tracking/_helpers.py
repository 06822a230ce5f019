"""Running the real CLI with trackers on, and reading back what each tracker holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SECRETS = {"WANDB_API_KEY": "wandb-secret-0123456789abcdef0123456789abcdef01234567",
           "MLFLOW_TRACKING_TOKEN": "mlflow-secret-token-9f8e7d6c5b4a"}


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_DIR": str(tmp_path / "wandb_dir"),
           "WANDB_SILENT": "true", **extra}
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "wandb_dir").mkdir(exist_ok=True)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 400):
    return subprocess.run([sys.executable, "-m", "raytune_ft", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if (p / "params.json").is_file())


def results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()
            if line.strip()]


def trial_id(trial_dir: Path) -> str:
    return results(trial_dir)[-1]["trial_id"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(tmp_path: Path, port: int | None = None
                        ) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with a sqlite store and proxied artifacts under tmp_path
    (`port`: the one a stopped server had, to bring it back)."""
    port = port or free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server_artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        stop(proc)
        raise AssertionError("mlflow server did not start within 120 s")
    import urllib.request

    while time.monotonic() < deadline:  # the port opens before the app answers
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as reply:
                if reply.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise AssertionError("mlflow server did not answer /health within 120 s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server this test started, by its process group (uvicorn's workers with it)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_mlflow(uri: str, experiment: Path, name: str) -> dict:
    """Read the experiment back with MlflowClient and check it against the trial folders:
    one parent, a nested child per trial with its params, per-iteration metrics at step =
    samples_seen, its status; the parent's params, artifacts and best metric."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    assert found is not None, f"no MLflow experiment {name}"
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = {r.data.tags["trial_id"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    dirs = trial_dirs(experiment)
    assert sorted(children) == sorted(trial_id(d) for d in dirs)
    assert len(runs) == 1 + len(dirs)  # no duplicates
    for directory in dirs:
        rows = results(directory)
        child = children[trial_id(directory)]
        params = json.loads((directory / "params.json").read_text())
        assert child.data.params == {k: json.dumps(v) if not isinstance(v, str) else v
                                     for k, v in params.items()}
        for metric in ("eval_accuracy", "eval_loss", "train_loss", "lr", "batch_size"):
            history = sorted(client.get_metric_history(child.info.run_id, metric),
                             key=lambda m: m.step)
            assert [m.step for m in history] == [r["samples_seen"] for r in rows], metric
            assert [m.value for m in history] == [float(r[metric]) for r in rows], metric
        budget = json.loads((experiment / "raytune_ft.json").read_text())["plan"]
        status = child.data.tags["status"]
        expected = "terminated" if rows[-1]["training_iteration"] == budget["iterations"] \
            else "stopped"
        assert status == expected and child.info.status == "FINISHED", (status, expected)
    record = json.loads((experiment / "raytune_ft.json").read_text())
    assert parent.data.params["metric"] == record["metric"]
    assert parent.data.params["train.max_epochs"] == json.dumps(record["train"]["max_epochs"])
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "raytune_ft.json" in artifacts
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/trials.parquet", "analysis/iterations.parquet",
            "analysis/report.html"} <= tables
    best = max(max(r[record["metric"]] for r in results(d)) for d in dirs)
    assert parent.data.metrics[f"best_{record['metric']}"] == best
    return {"parent": parent, "children": children}


class Outage:
    """A TCP relay on 127.0.0.1 in front of a real server: `down()` refuses connections and
    cuts open ones, as a server that went away; `up()` takes them again on the same port.
    The server itself (a real `mlflow server`) keeps running, so the outage starts and ends
    exactly when the test says, without waiting for a server to boot."""

    def __init__(self, upstream_port: int):
        import threading

        self.upstream = upstream_port
        self.port = free_port()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            # close() alone leaves a listener that a thread is blocked in accept() on taking
            # connections (Linux keeps the socket until accept returns); shutdown wakes it
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: down()
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def tune_trial(experiment: Path, trial_id: str, config: dict):
    """A Tune `Trial` as the driver holds it, in its folder of `experiment` (a stub: the
    trackers read the driver's trial, never its trainable)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(experiment.parent),
                             experiment_dir_name=experiment.name)
    trial = Trial("train_trial", config=dict(config), trial_id=trial_id, stub=True,
                  storage=storage)
    trial.storage.trial_dir_name = f"train_trial_{trial_id}"
    return trial


def exploit(trial, donor, checkpoint: str, config: dict) -> None:
    """What PBT's exploit does to `trial` before Tune restarts it (Ray 2.60
    `PopulationBasedTraining._exploit`): the new config, and the donor's latest checkpoint
    (`<donor's folder>/<checkpoint>`) as the one the restart restores."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    trial.set_config(dict(config))
    trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
        checkpoint=Checkpoint(f"{donor.storage.trial_fs_path}/{checkpoint}"), metrics={})
