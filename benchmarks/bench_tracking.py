"""Wall time of the quick experiment with tracking off and on, side by side.

Runs `raytune-ft tune experiments/sst2_quick.yaml` through the real CLI in pairs (off then
on, then on then off, ...), each a fresh process with its own Ray, and prints every wall time,
each pair's on/off ratio and the median ratio. "On" turns on the trackers given (default all
three): TensorBoard event files, MLflow against an `mlflow server` this script starts on
127.0.0.1 before the timed runs (sqlite store in a temporary folder; `--mlflow sqlite` logs
to a local sqlite store instead), and W&B in offline mode (WANDB_DIR in the temporary folder).
The experiment is the README's main command's; `--set` reduces it for a shorter run (whole
epochs are kept: a trial's budget and evaluation points are those of the quick experiment).

    flock /tmp/raytune_heavy.lock python benchmarks/bench_tracking.py --pairs 2 \
        --set run.num_samples=4 --set data.max_train_samples=1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

TARGET = 1.03  # tracking on within 3% of off
EXPERIMENT = _common.REPO / "experiments" / "sst2_quick.yaml"


def tracking_overrides(trackers: list[str], mlflow_uri: str | None) -> list[str]:
    sets = []
    if "tensorboard" in trackers:
        sets.append("tracking.tensorboard=true")
    if "mlflow" in trackers:
        sets.append(f"tracking.mlflow.tracking_uri={mlflow_uri}")
    if "wandb" in trackers:
        sets.append("tracking.wandb={project: bench, mode: offline}")
    return sets


def timed_run(tmp: Path, name: str, overrides: list[str]) -> float:
    """One `raytune-ft tune` in a fresh process; its wall time in seconds."""
    sets = [f"name={name}", f"run.storage_path={tmp / 'results'}", f"data.path={_common.GLUE_DIR}",
            *overrides]
    command = [sys.executable, "-m", "raytune_ft", "tune", str(EXPERIMENT), "--overwrite"]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "WANDB_DIR": str(tmp / "wandb"), "WANDB_SILENT": "true"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=_common.REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    best = next((line for line in done.stdout.splitlines() if line.startswith("best")), "")
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: tracking")]
    print(f"{name:<12} {wall:7.1f} s  load {_common.load_average()}  {best.strip()}"
          + (f"  {warned}" if warned else ""), flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--trackers", nargs="+", default=["tensorboard", "mlflow", "wandb"],
                        choices=["tensorboard", "mlflow", "wandb"])
    parser.add_argument("--mlflow", choices=["server", "sqlite"], default="server")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="reduce the experiment, e.g. run.num_samples=4")
    args = parser.parse_args()
    _common.header("bench_tracking")
    print(f"# experiment: {EXPERIMENT.name} {' '.join('--set ' + s for s in args.sets)}")
    print(f"# on: {', '.join(args.trackers)}; mlflow: {args.mlflow}", flush=True)
    sys.path.insert(0, str(_common.REPO / "tests" / "tracking"))
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "wandb").mkdir()
        server, uri = None, f"sqlite:///{tmp}/mlflow.db"
        if "mlflow" in args.trackers and args.mlflow == "server":
            from _helpers import start_mlflow_server

            server, uri = start_mlflow_server(tmp)
        try:
            on = tracking_overrides(args.trackers, uri)
            ratios = []
            totals = {"off": 0.0, "on": 0.0}
            for pair in range(1, args.pairs + 1):
                # alternate which goes first, so a warm cache or a drifting load favours
                # neither side
                order = ["off", "on"] if pair % 2 else ["on", "off"]
                walls = {side: timed_run(tmp, f"{side}_{pair}",
                                         args.sets if side == "off" else [*args.sets, *on])
                         for side in order}
                for side, wall in walls.items():
                    totals[side] += wall
                ratios.append(walls["on"] / walls["off"])
                print(f"pair {pair}: on/off {ratios[-1]:.3f}", flush=True)
            print(f"all pairs: on {totals['on']:.1f} s / off {totals['off']:.1f} s = "
                  f"{totals['on'] / totals['off']:.3f}", flush=True)
        finally:
            if server is not None:
                from _helpers import stop

                stop(server)
    median = statistics.median(ratios)
    _common.final("tracking overhead", f"wall time on/off median {median:.3f} over "
                  f"{len(ratios)} pairs ({', '.join(f'{r:.3f}' for r in ratios)})",
                  f"<= {TARGET:.2f}", median <= TARGET)


if __name__ == "__main__":
    main()
