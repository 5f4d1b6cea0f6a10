"""The Ray Train side of `vadray train`: the per-worker epoch loop and the TorchTrainer around it.

Every worker streams its shard of the volumes (`get_dataset_shard` → `iter_torch_batches`,
locally shuffled), normalises them on its device, and steps a DDP-wrapped model. Losses are
all-reduced so every worker takes the same early-stopping decision. Each epoch, rank 0
reports a checkpoint (model.pt, optimizer.pt, state.json); Ray Train keeps the best by
`selection_loss` (validation loss, or minus the synthetic-anomaly AUC with --select
synthetic) and the latest, which is what a restarted worker group
(FailureConfig) or a rerun with the same name and storage (--resume) continues from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time

import torch

from vadray import storage
from vadray.checkpoint import MODEL_FILE, unwrap
from vadray.exits import JobFailed
from vadray.pasted import PASTES
from vadray.steps import DIVERGED_WHY, end_of_epoch, fresh_state, reconstruct, selection_value, validation_pass

log = logging.getLogger("vadray.train")

RUN_NAME = "run"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


class Diverged(JobFailed):
    """No epoch had a usable loss: the run leaves nothing to resume (`run_training` removes it)."""


def _global_mean(total: float, count: int, device: torch.device) -> tuple[float, int]:
    """(Σ total / Σ count, Σ count) over all workers; NaN when no worker saw anything."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = t[0].item(), int(t[1].item())
    return (total / count if count else math.nan), count


def _maybe_fail(config: dict, step: int, rank: int, world: int) -> None:
    """Test hook: the last worker raises once at the chosen global step."""
    fail_step, marker = config["fail_at"]
    if fail_step is None or step != fail_step or rank != world - 1:
        return
    fs, path = storage.url_to_fs(marker, config["storage_options"])
    if fs.exists(path):
        return
    fs.pipe_file(path, f"failure injected at step {step} on rank {rank}\n".encode())
    raise RuntimeError(f"injected failure at step {step} on rank {rank} (test hook)")


# Volumes arrive one video chunk and stride at a time (trainvolumes streams each video in frame
# order), so the buffer a worker shuffles them in decides how mixed a mini-batch is. With 256
# volumes, a batch of 64 came from one chunk of one or two videos: on Ped2 at 59 px the
# validation loss after 3 epochs was 0.719, against 0.543 with a full shuffle (ped2-direct).
# 512 MiB of uint8 volumes holds all 5,904 of a Ped2 epoch at 59 px, ~1,000 at 227 px.
SHUFFLE_BUFFER_BYTES = 512 << 20


WORST_LOSS = sys.float_info.max


def ranked_loss(selection: float) -> float:
    """The `selection_loss` Ray ranks checkpoints by. A NaN would upset the ranking; the largest
    float ranks a diverged epoch last and, unlike inf, survives Ray Train's saved state (its
    JSON writes inf as null, and a resumed run then could not rank its checkpoints)."""
    return selection if math.isfinite(selection) else WORST_LOSS


def best_of(checkpoints: list) -> tuple:
    """The (checkpoint, metrics) of the lowest selection_loss, the earlier epoch on a tie; a
    null left by an older run's saved state ranks last."""
    def rank(pair):
        loss = pair[1]["selection_loss"]
        return (loss if isinstance(loss, (int, float)) else WORST_LOSS, pair[1]["epoch"])
    return min(checkpoints, key=rank)


def _say(line: str) -> None:
    """One progress line from a training worker. Ray Train patches `print` in its workers to
    log as well as print, so the driver showed every epoch line twice; the process's own
    stdout (which Ray streams to the driver) shows it once."""
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


def shuffle_buffer_volumes(batch_size: int, volume_bytes: int) -> int:
    return max(4 * batch_size, SHUFFLE_BUFFER_BYTES // max(1, volume_bytes))


def _batches(shard, batch_size: int, device, seed: int | None = None, shuffle_volumes: int | None = None):
    """uint8 (B, T, S, S) volumes of this worker's shard, moved to the device; shuffled in a
    buffer of `shuffle_volumes` with a seed, in stream order without."""
    shuffle = shuffle_volumes if seed is not None else None
    for batch in shard.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle,
                                          local_shuffle_seed=seed, device=device,
                                          pin_memory=device.type == "cuda"):
        yield batch["volume"]


def _restore(checkpoint, model, optimizer, device) -> dict:
    """Load weights, optimizer and loop state from a reported checkpoint; a fresh state without."""
    if checkpoint is None:
        return fresh_state()
    with checkpoint.as_directory() as folder:
        def load(name):
            return torch.load(os.path.join(folder, name), map_location=device, weights_only=True)
        unwrap(model).load_state_dict(load(MODEL_FILE))
        optimizer.load_state_dict(load(OPTIMIZER_FILE))
        with open(os.path.join(folder, STATE_FILE)) as f:
            state = json.load(f)
    state["resumed_after_epochs"].append(state["epoch"])
    return state


def _report(metrics: dict, state: dict, model, optimizer, rank: int) -> None:
    """Every worker reports (a barrier); rank 0 attaches the checkpoint: unwrapped weights,
    optimizer and loop state, enough to continue exactly where this epoch ended."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save(unwrap(model).state_dict(), os.path.join(folder, MODEL_FILE))
            torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(state, f)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function: restore, then epochs until max or early stop."""
    import ray.train
    import ray.train.torch

    from vadray.models import build
    from vadray.preprocess import NormStats

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    settings = config["settings"]
    select = settings.get("select", "val_loss")  # runs saved before --select chose by val loss
    torch.manual_seed(settings["seed"])
    # Ray started this worker with as many threads as CPUs it reserves; see raylib.threads_per_worker
    if config.get("torch_threads") and not on_gpu:
        torch.set_num_threads(config["torch_threads"])

    model = build(config["model"]["name"], **config["model"]["params"])
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)  # to device; DDP when world > 1
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    state = _restore(ray.train.get_checkpoint(), model, optimizer, device)
    if rank == 0 and state["resumed_after_epochs"]:
        _say(f"[vadray train] resumed after epoch {state['epoch']} (step {state['step']})")

    stats = NormStats.from_dict(config["norm_stats"])
    mean_image = torch.from_numpy(stats.mean_image).to(device)         # (S, S)
    batch_size = max(1, settings["batch_size"] // world)
    shuffle_volumes = shuffle_buffer_volumes(batch_size, settings["T"] * stats.mean_image.size)  # uint8 T×S×S
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    def forward(volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reconstruct(model, volumes, mean_image, stats.std)      # (B, T, 1, S, S) each

    def loss_of(volumes: torch.Tensor) -> torch.Tensor:
        x, y = forward(volumes)
        return torch.nn.functional.mse_loss(y, x)

    while not finished(state, settings["epochs"]):
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        model.train()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        seed = settings["seed"] * 100003 + epoch * 101 + rank
        for volumes in _batches(train_shard, batch_size, device, seed, shuffle_volumes):
            loss = loss_of(volumes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(volumes)
            count += len(volumes)
            state["step"] += 1
            _maybe_fail(config, state["step"], rank, world)
        train_loss, n_train = _global_mean(total.item(), count, device)
        seconds = time.perf_counter() - started

        val_loss = synthetic_auc = None
        if val_shard is not None:
            model.eval()
            total, count, auc, n_auc = validation_pass(
                _batches(val_shard, batch_size, device), forward, PASTES.get(select),
                settings["seed"])
            val_loss, _ = _global_mean(total, count, device)
            if select in PASTES:  # workers' AUCs weighted by their volumes
                synthetic_auc, _ = _global_mean(auc * n_auc if n_auc else 0.0, n_auc, device)
        selection = selection_value(select, train_loss, val_loss, synthetic_auc)

        state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                 "synthetic_auc": synthetic_auc, "train_volumes": n_train,
                                 "train_seconds": seconds})
        end_of_epoch(state, epoch, selection, settings["patience"])
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "synthetic_auc": synthetic_auc,
                   "selection_loss": ranked_loss(selection),
                   "best_epoch": state["best_epoch"],
                   "train_volumes": n_train, "epoch_seconds": seconds,
                   "volumes_per_s": n_train / seconds if seconds > 0 else None, "step": state["step"]}
        if rank == 0:
            val_text = f"{val_loss:.5f}" if val_loss is not None else "-"
            if synthetic_auc is not None:
                val_text += f" synthetic_auc {synthetic_auc:.4f}"
            _say(f"[vadray train] epoch {epoch}/{settings['epochs']} train_loss {train_loss:.5f} "
                 f"val_loss {val_text} best epoch {state['best_epoch']} "
                 f"{n_train} volumes in {seconds:.1f} s ({metrics['volumes_per_s']:.1f}/s)"
                 + {"early_stop": " early stop", "diverged": f" diverged (the loss is {DIVERGED_WHY})"}.get(
                     state["stopped"] or "", ""))
        _report(metrics, state, model, optimizer, rank)


def finished(state: dict, epochs: int) -> bool:
    """Whether a loop state is a run's end (early stop or the last epoch): the worker loop runs
    until it is, and the driver tells a finished run's last checkpoint from an aborted one's."""
    return bool(state["stopped"]) or state["epoch"] >= epochs


def _read_checkpoint(checkpoint, name: str) -> bytes:
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()


def run_trainer(info, train_videos, val_videos, *, model_spec: dict, settings: dict, checkpoint_dir: str,
                workers: int, gpus_per_worker: float, cpus_per_worker: float, torch_threads: int | None,
                max_failures: int,
                storage_options: dict | None, fail_at: tuple) -> dict:
    """Fit a TorchTrainer; {"state": last state.json, "best_metrics", "best_weights": bytes}."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vadray.trainvolumes import volume_dataset

    T, strides, hop = settings["T"], settings["strides"], settings["hop"]
    datasets = {"train": volume_dataset(info, train_videos, T, strides, hop, storage_options,
                                        seed=settings["seed"])}
    if val_videos:
        datasets["val"] = volume_dataset(info, val_videos, T, [1], T, storage_options)
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker > 0:
        resources["GPU"] = gpus_per_worker
    fs, path = storage.pyarrow_fs(checkpoint_dir, storage_options)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model": model_spec, "settings": settings, "norm_stats": info.stats.to_dict(),
                           "has_val": bool(val_videos), "fail_at": fail_at, "torch_threads": torch_threads,
                           # only the test hook writes through it; the config is never logged otherwise
                           "storage_options": storage_options if fail_at[0] else None},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="selection_loss",
                                               checkpoint_score_order="min")),
        datasets=datasets,
        # Ray splits a dataset into equal shards and drops the remainder (up to workers − 1
        # volumes; an epoch's train_volumes in the history is what was seen). The validation
        # set is not split: every worker measures all of it, so the validation loss does not
        # depend on the number of workers.
        dataset_config=DataConfig(datasets_to_split=["train"]))
    # Ray Train takes Ctrl-C itself: the first aborts the run and fit() RETURNS what was
    # checkpointed so far; a third calls sys.exit(0). Neither may look like a finished run.
    # Ray never puts the previous handler back, so calibration and the save after fit() would
    # swallow two Ctrl-Cs and exit 0 on the third: restore it.
    handler = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except SystemExit:
        raise KeyboardInterrupt from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
    if not result.best_checkpoints:   # a failure raises from fit(): only an abort ends here
        raise KeyboardInterrupt
    best_checkpoint, best_metrics = best_of(result.best_checkpoints)
    state = json.loads(_read_checkpoint(result.checkpoint, STATE_FILE))
    if not finished(state, settings["epochs"]):
        raise KeyboardInterrupt
    if state["best_epoch"] == 0:
        raise Diverged(f"training diverged: the loss was {DIVERGED_WHY} from epoch 1 on ({state['history'][-1]}); "
                       "check the statistics of the shards (stats/stats.json) or lower --lr. Nothing was saved")
    if state["stopped"] == "diverged":
        log.warning("the loss was %s at epoch %d: training ended there and keeps epoch %d",
                    DIVERGED_WHY, state["epoch"], state["best_epoch"])
    return {"state": state, "best_metrics": best_metrics,
            "best_weights": _read_checkpoint(best_checkpoint, MODEL_FILE)}
