"""Train a spatiotemporal autoencoder on clip shards with Ray Train (PyTorch DDP).

    vadray train OUTPUT/ ckpt/ --workers 2 --epochs 50
    vadray train s3://bucket/ingest/ s3://bucket/models/cam3 --workers 4 --gpus-per-worker 1

SHARDS is an ingest OUTPUT folder (or its clips/). Volumes of T=10 frames at strides 1, 2, 3
stream from the shards through Ray Data into every worker; a held-out fraction of the
VIDEOS is the validation set. Each epoch gets a selection value: the validation loss, or with
--select synthetic / synthetic_gliding how well the epoch tells validation volumes from copies
with a synthetic anomaly pasted in (vadray/pasted.py; never a test metric), or the training loss
when no video is held out. Training stops early when that value has not improved for
--patience epochs, and CHECKPOINT_DIR/final/ keeps the epoch with the best one. The validation
loss is the mean squared error over the validation videos' stride-1 volumes taken every T
frames. A failed worker
restarts from the last epoch's checkpoint; --resume continues an interrupted run with the
settings it was started with. Progress: one line per epoch from worker 0 (losses, volumes/s).
"""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timezone

import numpy as np

from vadray import storage
from vadray.calibration import validation_frame_errors
from vadray.checkpoint import CARD_FILE, FINAL_DIR, MODEL_FILE, model_card, read_card, save, weights_from_bytes
from vadray.exits import JobFailed, UsageError
from vadray.models import check_size, names, params_help, spec
from vadray.raylib import ensure_ray, require_room, threads_per_worker
from vadray.steps import SELECTIONS
from vadray.trainloop import RUN_NAME, Diverged, run_trainer
from vadray.trainvolumes import count_volumes, discover, split_by_video
from vadray.volumes import T_DEFAULT, parse_strides

log = logging.getLogger("vadray.train")

RUN_FILE = "run.json"
# Settings that define what is trained: --resume takes them from run.json, not the command line.
RUN_SETTINGS = ("shards", "model", "model_params", "epochs", "batch_size", "lr", "patience",
                "strides", "hop", "val_fraction", "seed", "T", "select")


def add_arguments(parser) -> None:
    parser.add_argument("shards", metavar="SHARDS", help="ingest OUTPUT folder (clips/ + stats/) or its clips/ folder; local or s3://")
    parser.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR", help="where Ray Train keeps checkpoints and final/ goes; local or s3://")
    parser.add_argument("--model", default="convlstm_ae", choices=names(), help="architecture (default: convlstm_ae, Chong & Tay)")
    parser.add_argument("--model-params", default=None,
                        help="JSON object of architecture hyper-parameters, e.g. '{\"lstm_channels\": [32, 16, 32]}' "
                             f"(default: the paper's; {params_help()})")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP processes)")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per worker; > 0 trains on GPU with bf16 autocast and channels_last")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker; leave some to the Ray Data tasks that make volumes")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads per CPU worker (default: the largest node's CPUs divided by --workers, "
                             "since making volumes is light beside the model; on GPU, Ray's setting)")
    parser.add_argument("--epochs", type=int, default=50, help="maximum number of epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="global mini-batch (split across workers)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--patience", type=int, default=10, help="stop after this many epochs without a better selection value (see --select)")
    parser.add_argument("--strides", default="1,2,3", help="temporal strides of the training volumes (augmentation)")
    parser.add_argument("--hop", type=int, default=1, help="frames between the starts of consecutive training volumes")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the VIDEOS held out for validation (0: none)")
    parser.add_argument("--select", choices=SELECTIONS, default="val_loss",
                        help="how the epoch kept in final/ (and early stopping) is chosen on the held-out "
                             "NORMAL videos: val_loss (default); synthetic: the best AUC at telling "
                             "validation volumes from copies with a fast patch of the scene pasted in; "
                             "synthetic_gliding: the same with the volume's own moving object gliding "
                             "at ~4x walking speed (an autoencoder that keeps lowering its loss also "
                             "learns to reconstruct anomalies)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation and shuffling")
    parser.add_argument("--max-failures", type=int, default=3, help="worker failures to recover from (from the last checkpoint; -1: no limit)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in CHECKPOINT_DIR with its saved settings (SHARDS, --epochs, "
                             "--lr, … given with it are ignored, and a warning names each that differs; "
                             "--workers and the resources are used)")
    storage.add_storage_options(parser, "SHARDS and CHECKPOINT_DIR")


def run(args) -> int:
    options = storage.parse_storage_options(args.storage_options)
    try:
        model_params = json.loads(args.model_params) if args.model_params else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-params is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(model_params, dict):
        raise UsageError("--model-params must be a JSON object, e.g. '{\"lstm_channels\": [32, 16, 32]}'")
    card = run_training(
        args.shards, args.checkpoint_dir, model=args.model, model_params=model_params,
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
        strides=parse_strides(args.strides), hop=args.hop, val_fraction=args.val_fraction, seed=args.seed,
        select=args.select,
        max_failures=args.max_failures, resume=args.resume, torch_threads=args.torch_threads,
        storage_options=options)
    print(json.dumps({"model_id": card["model_id"], "best_epoch": card["best_epoch"],
                      "epochs_run": card["epochs_run"], "best_val_loss": card["best_val_loss"],
                      "final": storage.join(args.checkpoint_dir, FINAL_DIR)}, indent=2))
    return 0


def ignored_on_resume(given: dict, saved: dict) -> list[str]:
    """'name VALUE (saved SAVED)' for each setting whose value here differs from the saved run's
    (defaults included: --resume cannot tell a typed 50 from the default 50)."""
    return [f"{key} {given[key]!r} (saved {saved[key]!r})" for key in RUN_SETTINGS
            if key in given and key in saved and given[key] != saved[key]]


def _saved_run(checkpoint_dir: str, storage_options: dict | None) -> dict | None:
    """run.json of the run in CHECKPOINT_DIR, None when there is none, {} when the folder holds
    Ray Train state or a model that no run.json describes: not ours to continue or overwrite (a
    new final/ beside a model copied to the top would change what `--checkpoint DIR` loads)."""
    fs, path = storage.url_to_fs(checkpoint_dir, storage_options)
    if fs.exists(f"{path}/{RUN_FILE}"):
        return json.loads(fs.cat_file(f"{path}/{RUN_FILE}"))
    if any(fs.exists(f"{path}/{name}") for name in (RUN_NAME, FINAL_DIR, MODEL_FILE, CARD_FILE)):
        return {}
    return None


def _calibrates(errors: dict) -> bool:
    """Whether these frame errors give anomaly_score a scale (a finite mean and a std > 0)."""
    e = np.asarray(errors["recon_error"], np.float64)
    e = e[np.isfinite(e)]
    return e.size > 1 and float(e.std()) > 0


def _finished_card(checkpoint_dir: str, run_id: str | None, storage_options: dict | None) -> dict | None:
    """final/'s card when this run wrote it: --resume of a finished run calibrated and saved it
    again, with a new date and an empty resume record."""
    if run_id is None:
        return None
    try:
        card = read_card(storage.join(checkpoint_dir, FINAL_DIR), storage_options)
    except FileNotFoundError:   # not finished (or no final/ of its own)
        return None
    return card if card.get("run_id") == run_id else None


def _forget_run(checkpoint_dir: str, storage_options: dict | None) -> None:
    """A run that diverged from its first epoch has nothing to resume: its run.json and Ray
    Train state go, so the same command with a lower --lr starts afresh."""
    fs, path = storage.url_to_fs(checkpoint_dir, storage_options)
    storage.delete(fs, [f"{path}/{RUN_FILE}", f"{path}/{RUN_NAME}"], recursive=True)


def _start_run(checkpoint_dir: str, settings: dict, footage: dict, storage_options: dict | None) -> str:
    """Write run.json for a new run; its run id."""
    fs, path = storage.url_to_fs(checkpoint_dir, storage_options)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"train-{stamp}-{uuid.uuid4().hex[:6]}"
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{RUN_FILE}", json.dumps(dict(settings, run_id=run_id, footage=footage),
                                                  indent=2).encode())
    return run_id


def _footage(info, train_videos, val_videos) -> dict:
    """What a run trains and validates on: its videos' frame counts and the statistics' frames."""
    return {"train": {v.video_id: v.num_frames for v in train_videos},
            "val": {v.video_id: v.num_frames for v in val_videos},
            "stats_frames": int(info.stats.num_frames)}


def check_same_footage(saved: dict | None, now: dict, shards: str) -> None:
    """--resume continues epochs on the shards the run started on: shards ingested since would
    change the statistics (the input's scale) and may move videos between training and
    validation under a half-trained model. Runs saved before run.json recorded it pass."""
    if not saved or saved == now:
        return
    changed = []
    for part in ("train", "val"):
        was, is_ = saved.get(part, {}), now[part]
        added, gone = sorted(set(is_) - set(was)), sorted(set(was) - set(is_))
        grown = sorted(v for v in set(was) & set(is_) if was[v] != is_[v])
        changed += [f"{part}: {label} {', '.join(ids[:5])}{' …' if len(ids) > 5 else ''}"
                    for label, ids in (("new", added), ("gone", gone), ("other frame count", grown)) if ids]
    if saved.get("stats_frames") != now["stats_frames"]:
        changed.append(f"statistics over {now['stats_frames']} frames (the run started on {saved.get('stats_frames')})")
    raise UsageError(f"--resume: {shards} changed since the run started ({'; '.join(changed)}); a run "
                     "continues on the shards it started on: restore them, or train into a new CHECKPOINT_DIR")


def _model_spec(settings: dict, size: int) -> dict:
    """The architecture's card entry; a UsageError when it cannot take S×S frames."""
    import torch

    from vadray.models import build

    T = settings["model_params"].get("T", settings["T"])
    if type(T) is not int or T != settings["T"]:   # conv_ae's T is its channel count: it would fail in the workers
        raise UsageError(f"--model-params T={T!r}: vadray trains and scores {settings['T']}-frame volumes "
                         "(the paper's T); leave T out of --model-params")
    try:
        check_size(settings["model"], size)
    except ValueError as exc:
        raise UsageError(f"{exc} (the shards hold {size}×{size} frames)") from None
    # One volume through the model here, before run.json is written: parameters that build a
    # model that cannot run (an even lstm_kernel changes the map size, a channel count that is
    # not a list) would otherwise fail in every worker, and --resume would replay them.
    try:
        model = build(settings["model"], **settings["model_params"])
        with torch.inference_mode():
            out = model(torch.zeros(1, T, 1, size, size))
        if out.shape != (1, T, 1, size, size):
            raise ValueError(f"it turns a (1, {T}, 1, {size}, {size}) volume into {tuple(out.shape)}")
    except (ValueError, TypeError, RuntimeError) as exc:
        raise UsageError(f"--model-params {json.dumps(settings['model_params'])} do not make a working "
                         f"{settings['model']} for {size}×{size} frames: {exc}") from None
    return spec(model)


def _require_even_split(batch_size: int, workers: int, resumed: bool) -> None:
    """Each worker takes batch_size // workers: the card must say what was trained."""
    if batch_size % workers:
        raise UsageError(f"{'the run was started with --batch-size' if resumed else '--batch-size'} {batch_size}, "
                         f"which does not split evenly over {workers} workers: use "
                         + (f"--workers dividing {batch_size}" if resumed else
                            f"a multiple of {workers} (e.g. {batch_size - batch_size % workers or workers})"))


def run_training(shards: str, checkpoint_dir: str, *, model: str = "convlstm_ae", model_params: dict | None = None,
                 workers: int = 1, gpus_per_worker: float = 0, cpus_per_worker: float = 1.0, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-4, patience: int = 10, strides=(1, 2, 3), hop: int = 1,
                 val_fraction: float = 0.1, seed: int = 0, select: str = "val_loss", max_failures: int = 3,
                 resume: bool = False, torch_threads: int | None = None,
                 storage_options: dict | None = None, fail_at_step: int | None = None) -> dict:
    """Train, keep the best epoch in CHECKPOINT_DIR/final/, return its model card.

    With `resume`, the settings saved in CHECKPOINT_DIR/run.json replace the ones given here
    (all but workers, GPUs, CPUs, torch threads and max_failures). `fail_at_step` is a test hook: the last
    worker raises once at that global step (a marker file in CHECKPOINT_DIR makes it fail only
    once), so the run has to resume from a checkpoint.
    """
    shards, checkpoint_dir = storage.text(shards), storage.text(checkpoint_dir)
    if workers < 1 or epochs < 1 or batch_size < 1 or patience < 1 or hop < 1 or not lr > 0:
        raise UsageError("--workers, --epochs, --batch-size, --patience, --hop and --lr must be positive")
    if not (cpus_per_worker >= 0 and gpus_per_worker >= 0 and cpus_per_worker + gpus_per_worker > 0):
        raise UsageError("--cpus-per-worker and --gpus-per-worker cannot be negative, and a worker needs "
                         "one of them above 0")
    if torch_threads is not None and torch_threads < 1:
        raise UsageError("--torch-threads must be 1 or more")
    if max_failures < -1:
        raise UsageError("--max-failures must be 0 or more (-1: no limit)")
    if not resume:
        _require_even_split(batch_size, workers, resumed=False)
    settings = {"shards": storage.absolute(shards), "model": model, "model_params": model_params or {},
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience, "strides": list(strides),
                "hop": hop, "val_fraction": val_fraction, "seed": seed, "T": T_DEFAULT, "select": select}
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    storage.require_reachable(storage_options, SHARDS=shards, CHECKPOINT_DIR=checkpoint_dir)
    storage.require_folder_to_write(storage_options, must_delete=True, CHECKPOINT_DIR=checkpoint_dir)
    saved = _saved_run(checkpoint_dir, storage_options)
    if saved == {}:
        raise UsageError(f"{checkpoint_dir} holds a model or Ray Train state that no {RUN_FILE} describes: "
                         "it is not a vadray run to continue, and training into it would change what it "
                         "holds; choose an empty CHECKPOINT_DIR")
    if resume and not saved:
        raise UsageError(f"--resume: {checkpoint_dir} holds no vadray run to continue ({RUN_FILE} missing)")
    if not resume and saved is not None:
        raise UsageError(f"{checkpoint_dir} holds a run already: pass --resume to continue it, "
                         f"or choose an empty CHECKPOINT_DIR")
    if resume and (card := _finished_card(checkpoint_dir, saved.get("run_id"), storage_options)):
        log.info("run %s finished already: %s holds its best epoch %d of %d; nothing to resume", saved["run_id"],
                 storage.join(checkpoint_dir, FINAL_DIR), card["best_epoch"], card["epochs_run"])
        return card
    if resume:
        given, settings = settings, {"select": "val_loss"} | {k: saved[k] for k in RUN_SETTINGS if k in saved}
        ignored = ignored_on_resume(given, settings)
        log.info("resuming run %s with its saved settings", saved["run_id"])
        if ignored:
            log.warning("--resume keeps the run's saved settings; this command's values (typed or default) "
                        "not used: %s", "; ".join(ignored))
    if resume:   # the run's own batch size, with this command's --workers
        _require_even_split(settings["batch_size"], workers, resumed=True)
    # Inputs and resources are checked before anything is written.
    info = discover(settings["shards"], storage_options)
    model_spec = _model_spec(settings, info.size)
    train_videos, val_videos = split_by_video(info.videos, settings["val_fraction"])
    T, strides, hop = settings["T"], settings["strides"], settings["hop"]
    per_stride = {s: count_volumes(train_videos, T, [s], hop) for s in strides}
    n_train = sum(per_stride.values())
    if n_train == 0:
        raise UsageError(f"the training videos are too short for one volume of {T} frames at strides {strides}")
    if val_videos and count_volumes(val_videos, T, [1], T) == 0:   # the validation set is stride 1, hop T
        log.warning("the %d validation videos hold no %d decoded frames in a row: epochs are chosen by the "
                    "training loss (the card says so); use longer footage or a larger --val-fraction",
                    len(val_videos), T)
    idle, short = [s for s, n in per_stride.items() if n == 0], n_train < settings["batch_size"]
    if idle or short:   # the card would state strides or batches never trained
        remedies = ["fewer strides"] * bool(idle) + ["a smaller --batch-size"] * short
        log.warning("the training videos yield %d volumes an epoch%s%s: use longer footage or %s", n_train,
                    f" (fewer than one batch of {settings['batch_size']})" if short else "",
                    f", none at stride(s) {', '.join(map(str, idle))} (a volume at stride s spans {T - 1}·s + 1 "
                    "frames)" if idle else "", " or ".join(remedies))
    footage = _footage(info, train_videos, val_videos)
    if resume:
        check_same_footage(saved.get("footage"), footage, settings["shards"])
    ensure_ray()
    require_room(workers, cpus_per_worker, gpus_per_worker,
                 f"--workers {workers} with --cpus-per-worker {cpus_per_worker:g}"
                 + (f" and --gpus-per-worker {gpus_per_worker:g}" if gpus_per_worker else ""))
    if torch_threads is None and not gpus_per_worker:
        torch_threads = threads_per_worker(workers)
    run_id = saved["run_id"] if resume else _start_run(checkpoint_dir, settings, footage, storage_options)
    log.info("run %s: training on %d videos (%d volumes/epoch), validating on %d videos",
             run_id, len(train_videos), n_train, len(val_videos))

    fail_marker = storage.join(checkpoint_dir, f".injected-failure-step{fail_at_step}") if fail_at_step else None
    try:
        outcome = run_trainer(info, train_videos, val_videos, model_spec=model_spec, settings=settings,
                              checkpoint_dir=checkpoint_dir, workers=workers, gpus_per_worker=gpus_per_worker,
                              cpus_per_worker=cpus_per_worker, torch_threads=torch_threads,
                              max_failures=max_failures, storage_options=storage_options,
                              fail_at=(fail_at_step, fail_marker))
    except Diverged:
        _forget_run(checkpoint_dir, storage_options)
        raise

    # Calibrate on held-out normal footage (validation videos; training videos when there are none).
    errors = validation_frame_errors(info, val_videos or train_videos, model_spec, outcome["best_weights"], T,
                                     storage_options, use_gpu=gpus_per_worker > 0)
    if not _calibrates(errors) and val_videos:   # score would refuse a card without a scale
        log.warning("the validation videos gave no frame errors with a spread (no volume of %d decoded frames "
                    "in a row?): anomaly_score is calibrated on the training videos instead", T)
        errors = validation_frame_errors(info, train_videos, model_spec, outcome["best_weights"], T,
                                         storage_options, use_gpu=gpus_per_worker > 0)
        errors |= {"on": "training videos (the validation videos gave no frame errors)", "videos": len(train_videos)}
    if not _calibrates(errors):
        raise JobFailed(f"the trained model's frame errors on its own footage are not finite numbers with a "
                        f"spread, so anomaly_score has no scale and nothing was saved to {FINAL_DIR}/; the "
                        f"epochs are in {storage.join(checkpoint_dir, RUN_NAME)}")
    state_dict = weights_from_bytes(outcome["best_weights"])
    card = model_card(info, settings, model_spec, state_dict, outcome, errors, train_videos, val_videos,
                       n_train, run_id, workers=workers, gpus_per_worker=gpus_per_worker)
    save(storage.join(checkpoint_dir, FINAL_DIR), state_dict, card, storage_options)
    if card["best_val_loss"] is None:
        chosen = "no validation videos: by training loss"
    elif settings["select"] == "val_loss":
        chosen = f"validation loss {card['best_val_loss']:.5f}"
    else:
        chosen = f"chosen by --select {settings['select']}; validation loss {card['best_val_loss']:.5f}"
    log.info("best epoch %d of %d (%s) → %s", card["best_epoch"], card["epochs_run"], chosen,
             storage.join(checkpoint_dir, FINAL_DIR))
    return card
