"""Thin Ray plumbing: join a cluster when there is one, else start a local Ray."""
from __future__ import annotations

import math
import os
import sys
import time

import ray

from vadray.exits import JobFailed, keep_answering_sigterm


def ensure_ray(num_cpus: int | None = None) -> float:
    """Connect once. RAY_ADDRESS (set inside `ray job submit`) joins that cluster. Returns the
    seconds it took (0 when connected already): a job's frames/s leaves out a local Ray's start."""
    if ray.is_initialized():
        return 0.0
    started = time.perf_counter()
    # Progress in a terminal: Ray Data 2.60's default there renders through tqdm_ray and showed
    # nothing (measured, with and without tqdm); its rich display does. Logs and files (not a
    # terminal) keep Ray Data's periodic progress lines: nothing changes for them.
    if sys.stdout.isatty():
        context = ray.data.DataContext.get_current()
        context.enable_rich_progress_bars, context.use_ray_tqdm = True, False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # With the dashboard (the default when ray[default] is installed, as here), a local run
        # can be watched at http://127.0.0.1:8265, and Ray Train's placement-group cleaner can
        # reach the state API: without it, that actor logs "Failed to query Ray Train
        # Controller actor state" every second of a training run (Ray 2.60, measured).
        ray.init(num_cpus=num_cpus, log_to_driver=True)
    keep_answering_sigterm()   # the CLI's SIGTERM handler again: ray.init installs Ray's own
    return time.perf_counter() - started


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` CPU model processes (score actors, training workers):
    the largest node's CPUs shared among them.

    Each reserves fewer CPUs than that so that the Ray Data tasks feeding it can run beside it,
    and Ray then starts it with OMP_NUM_THREADS set to its reservation; but the model is most of
    the work and the feeding is bursty, so that many threads would leave the other cores idle
    (training at 59 px on 2 cores: 204 s an epoch with 1 thread, 133 s with 2, same losses).
    """
    cpus = max((n.get("Resources", {}).get("CPU", 1.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    return max(1, int(cpus) // max(1, workers))


def require_room(count: int, cpus_each: float, gpus_each: float, asked: str, data_cpus: float = 1.0) -> None:
    """Refuse (UsageError) `count` long-lived workers or actors of `cpus_each` CPUs and
    `gpus_each` GPUs that this Ray cannot all place, or that leave under `data_cpus` CPUs to
    the Ray Data tasks feeding them: the job would wait forever (Ray only warns that it "may
    hang"). Fractions of a GPU do not add up across GPUs: two 0.6-GPU actors need two GPUs.
    On a cluster joined through RAY_ADDRESS the autoscaler may add nodes: a warning there."""
    import logging

    from vadray.exits import UsageError

    have = ray.cluster_resources()
    total_cpus, total_gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    problems, hints = [], []
    if gpus_each > 0:
        per_gpu = math.floor(1 / gpus_each) if gpus_each < 1 else 1
        needed = math.ceil(count / per_gpu) * (1 if gpus_each < 1 else gpus_each)
        if needed > total_gpus:
            problems.append(f"{needed:g} GPU{'s' * (needed != 1)}, and this Ray has {total_gpus:g}")
            hints.append("run on CPU (no GPU option)" if total_gpus == 0 else "ask for fewer, or fewer GPUs each")
    if total_cpus - count * cpus_each < data_cpus:
        problems.append(f"{count * cpus_each:g} of its {total_cpus:g} CPUs, which leaves less than {data_cpus:g} "
                        "to the tasks that decode and feed them")
        hints.append("ask for fewer, or fewer CPUs each")
    if not problems:
        return
    message = f"{asked} would take {'; and '.join(problems)}: the job would wait forever; {'; '.join(hints)}"
    if os.environ.get("RAY_ADDRESS"):
        logging.getLogger("vadray").warning("%s (unless the cluster adds nodes)", message)
    else:
        raise UsageError(message)


def failed_actor_start(exc: BaseException) -> BaseException:
    """A Ray Data actor whose constructor raised JobFailed reaches the driver as an
    ActorDiedError holding the remote traceback's text: the JobFailed again (one line, exit
    status 1), or `exc` itself for any other failure."""
    marker = f"{JobFailed.__module__}.{JobFailed.__name__}: "
    text = str(getattr(exc, "error_msg", "") or exc)
    if isinstance(exc, ray.exceptions.RayActorError) and marker in text:
        return JobFailed(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return exc
