"""`semnb predict --engine ray`: the same prediction run on a Ray cluster, into the same files.

Why Ray: an archive of millions of images outgrows one machine, and Ray Data is the batch
inference engine PyTorch users already run: a dataset of work items streamed through a pool
of actors, each holding the model (one load per actor, `num_gpus` each when there are GPUs).

How it stays equal to `--engine local`: the work items are the run's pending batch numbers
(`semnb.predictions.PredictJob`: batch k = images [k * batch_size, (k + 1) * batch_size)), and an
actor computes a batch with the local engine's own `write_batch`: maps, masks, then the part,
each written atomically. So a killed actor's batch is simply computed again by its restarted
actor (same bytes), a killed driver resumes at the missing parts (with either engine), and the
final table, CSV and report are assembled by the same `finish_run`.

Taught in: 00_quickstart.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from semnb.errors import SemnbInputError
from semnb.model_folder import load_model
from semnb.predictions import (
    Predictions,
    PredictJob,
    finish_run,
    read_batch,
    start_run,
    write_batch,
)


class _BatchWriter:
    """A Ray Data actor: loads the model once, then computes the batches it is given into their files."""

    def __init__(self, model_dir: str, device: str, precision: str | None, job_ref, cwd: str):
        import ray

        if Path(cwd).is_dir():  # relative image paths mean the same files as on the driver (one machine)
            os.chdir(cwd)
        self.model = load_model(model_dir, device=device, precision=precision)
        self.job: PredictJob = ray.get(job_ref)
        self.said: set = set()

    def __call__(self, batch: dict) -> dict:
        for k in batch["batch"]:
            k = int(k)
            if not self.job.part(k).is_file():  # a retried task may hold batches already done
                write_batch(self.model, self.job, k, read_batch(self.job, k), self.said)
        return batch


def predict_with_ray(model_dir: str | Path, images: str | Path | Sequence[str | Path], out_dir: str | Path,
                     threshold: float | None = None, batch_size: int = 16, concurrency: int = 2,
                     num_gpus: float = 0.0, address: str | None = None, overwrite: bool = False, top_n: int = 12,
                     device: str = "auto", precision: str | None = None, progress: bool = False) -> Predictions:
    """`semnb.predict` of the model saved in `model_dir`, its batches computed by a pool of Ray actors.

    `concurrency` actors each load the model from `model_dir` (a path every Ray node can read,
    as `images` and `out_dir`) with `num_gpus` GPUs each when > 0. `address=None` uses the Ray
    this process has started or starts a local one (and shuts it down at the end); "auto" or
    "ray://host:port" connects to a running cluster. Same files as `predict` for the same
    model and images, and a run started with one engine can be resumed with the other.

    Taught in: 00_quickstart.
    """
    if concurrency < 1:
        raise SemnbInputError("--concurrency", f"got {concurrency}", "use 1 or more Ray workers")
    if num_gpus < 0:
        raise SemnbInputError("--gpus-per-worker", f"got {num_gpus}", "use 0 (CPU) or a positive fraction of a GPU")
    model_dir, out_dir = Path(model_dir).absolute(), Path(out_dir).absolute()
    _check_reachable(address)  # before anything is written
    job = start_run(load_model(model_dir, device="cpu", precision=precision), images, out_dir, threshold,
                    batch_size, overwrite)  # the driver's copy gives the run record, and checks the folder once
    if job.pending:
        _run_pool(job, model_dir, concurrency, num_gpus, address, device, precision, progress)
    return finish_run(job, top_n)


def _run_pool(job: PredictJob, model_dir: Path, concurrency: int, num_gpus: float, address: str | None,
              device: str, precision: str | None, progress: bool) -> None:
    import ray

    started = _connect(address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts batches; Ray's would count blocks of each stage
        items = ray.data.from_items([{"batch": k} for k in job.pending], override_num_blocks=len(job.pending))
        done = items.map_batches(
            _BatchWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
            fn_constructor_kwargs=dict(model_dir=str(model_dir), device=device, precision=precision,
                                       job_ref=ray.put(job), cwd=os.getcwd()),
            num_cpus=1, num_gpus=num_gpus or None)  # Ray Data's actors have max_restarts = max_task_retries = -1:
        # a killed actor comes back and the batch it held is computed again
        with tqdm(total=len(job.pending), desc="predict (ray)", disable=not progress) as bar:
            for batch in done.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(batch["batch"]))
    finally:
        if started:
            ray.shutdown()


def _connect(address: str | None) -> bool:
    """Use the Ray already running in this process, or start a local one / connect; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, logging_level="warning")
        return True
    try:
        ray.init(address=address, logging_level="warning")
    except (OSError, ValueError, RuntimeError) as err:  # ConnectionError and socket errors are OSErrors
        raise _unreachable(address, err) from err
    return True


def _check_reachable(address: str | None) -> None:
    """Refuse a host:port nothing answers on at once: Ray itself retries an unreachable address for minutes."""
    if address is None or address == "auto":
        return
    try:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise _unreachable(address, err) from err


def _unreachable(address: str, err: BaseException) -> SemnbInputError:
    return SemnbInputError(f"--ray-address {address}", f"cannot be reached ({str(err).splitlines()[0]})",
                           "start the cluster (`ray start --head`) and pass its address (host:port, ray://host:"
                           "port or auto), or leave --ray-address out to run a local Ray")
