"""The other workers of a data-parallel trial: Ray actors in the trial's placement group.

The Tune trial function is rank 0. With `resources.workers_per_trial` N > 1 it starts N - 1
`TrialWorker` actors, one per bundle 1..N-1 of the trial's placement group (bundle 0 is its
own), and all N join one torch process group (gloo on CPU, NCCL on GPU) at rank 0's address.
Each actor builds the same loop, loads the same checkpoint (rank 0 reads it and sends its
files: another node cannot read rank 0's disk) and runs every interval alongside rank 0; the
collectives inside the loop keep them in step. Rank 0 alone reports to Tune and checkpoints.
The actors end with the trial function, whatever ends it.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from raytune_ft.training.device import choose_device, out_of_memory_advice
from raytune_ft.training.distributed import SINGLE, backend_for, init_world, leave_world
from raytune_ft.tuning.trial import Trial


class TrialWorker:
    """Rank `rank` (>= 1) of a data-parallel trial (run as a Ray actor)."""

    def __init__(self, rank: int, size: int, address: str, trial: Trial) -> None:
        resources = trial.setup.experiment.resources
        self.world = init_world(rank, size, address, backend_for(choose_device(
            resources.worker_gpus)))
        self.loop = trial.build_loop(trial.bundle(), self.world)

    def ready(self) -> bool:
        return True

    def load(self, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            for name, data in files.items():
                (Path(directory) / name).write_bytes(data)
            self.loop.load(directory)

    def run_interval(self) -> int:
        with out_of_memory_advice(self.loop):
            self.loop.run_interval()
        return self.loop.state.samples_seen

    def close(self) -> None:
        leave_world(self.world)


class WorkerGroup:
    """Rank 0's view of its trial's workers; with one worker, a no-op."""

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.size = trial.setup.experiment.resources.workers_per_trial
        self.world = SINGLE
        self.actors: list = []
        self._pending: list = []

    def __enter__(self) -> WorkerGroup:
        if self.size == 1:
            return self
        import ray

        resources = self.trial.setup.experiment.resources
        address = f"tcp://{_this_node_ip()}:{_free_port()}"
        group = ray.util.get_current_placement_group()
        actor = ray.remote(TrialWorker)
        for rank in range(1, self.size):
            strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=rank)
            self.actors.append(actor.options(
                num_cpus=resources.worker_cpus, num_gpus=resources.worker_gpus,
                resources=dict(resources.custom), scheduling_strategy=strategy,
                max_concurrency=1,
            ).remote(rank, self.size, address, self.trial))
        backend = backend_for(choose_device(resources.worker_gpus))
        self._pending = [actor.ready.remote() for actor in self.actors]
        try:
            self.world = init_world(0, self.size, address, backend)  # waits for every rank
            self._raise_worker_error()
        except BaseException as error:
            self._raise_worker_error(error)
            raise
        finally:
            if self.world is SINGLE:  # the group never formed
                self.__exit__()
        return self

    def load(self, directory: str) -> None:
        """Every other worker continues from the checkpoint rank 0 just loaded."""
        if not self.actors:
            return
        import ray

        files = ray.put({p.name: p.read_bytes() for p in Path(directory).iterdir()
                         if p.is_file()})  # one copy in the object store for every worker
        ray.get([actor.load.remote(files) for actor in self.actors])

    @contextlib.contextmanager
    def interval(self) -> Iterator[None]:
        """Rank 0's interval inside the block; the other workers run theirs alongside."""
        if not self.actors:
            yield
            return
        import ray

        self._pending = [actor.run_interval.remote() for actor in self.actors]
        try:
            yield
        except BaseException as error:
            self._raise_worker_error(error)
            raise
        ray.get(self._pending)

    def _raise_worker_error(self, error: BaseException | None = None, wait_s: float = 5.0
                            ) -> None:
        """A worker's own error, if one failed: rank 0 itself only sees a collective that
        timed out (or nothing yet, without `error`)."""
        import ray

        done, _ = ray.wait(self._pending, num_returns=len(self._pending),
                           timeout=wait_s if error is not None else 0)
        for ref in done:
            ray.get(ref)  # raises the worker's exception

    def __exit__(self, *exc) -> None:
        if not self.actors:
            return
        import ray

        leave_world(self.world)
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _this_node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
