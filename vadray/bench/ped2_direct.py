"""vadray bench ped2-direct: decode, train and score in ONE process on one device, without Ray.

Why it exists: a GPU machine that has PyTorch and PyAV but no Ray (a lent box without
network access, say) can still give the paper's Ped2 settings a run. The pieces are the jobs' own,
composed in one process instead of Ray Data tasks and a TorchTrainer:
  decode      every video of TRAIN (and TEST) with `probe.probe` + `decode.decode_segment` at S×S,
              statistics from `preprocess.PartialSums` — what `vadray ingest` stores
  split       held-out TRAINING videos for validation (`trainvolumes.split_by_video`)
  volumes     T=10 at --strides, every --train-hop frames (`volumes.volume_starts`), gathered
              on the device from the decoded frames held there as uint8
  step        `steps.reconstruct` (normalise, bf16 autocast on GPU), MSE, Adam — `vadray train`'s step
  selection   `steps.end_of_epoch` on the validation loss (stride-1 volumes every T frames),
              or with --select synthetic / synthetic_gliding on pasted anomalies (`vadray.pasted`)
  card        validation frame errors (`scoring.volume_sums` on stride-1
              volumes at scoring's default hop, the mean over volumes, no extra volume on a
              video's last frame: `vadray train`'s calibration, computed in one process) +
              `checkpoint.model_card`, so the checkpoint in WORKDIR/checkpoint/final/ is scored by
              the real `vadray score` job.

Diagnostics (optional): with --test and --labels, the test videos are scored after
every epoch (stride-1 volumes every --hop frames, the mean over volumes, the paper's
regularity) and the AUCs are printed and recorded. They are NEVER used to choose anything:
the epoch kept is chosen on the validation videos only (--select), as in `vadray train`.
Also printed: the model's scoring speed on this device (frames/s, the paper's 140 on a Titan X).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from vadray import scoring, steps
from vadray.exits import JobFailed, UsageError
from vadray.models import names
from vadray.pasted import PASTES
from vadray.steps import SELECTIONS, reconstruct, validation_pass
from vadray.trainvolumes import Shards, VideoShards, split_by_video
from vadray.volumes import T_DEFAULT, parse_strides, volume_starts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train", metavar="TRAIN", help="folder of normal (training) videos, e.g. ucsd-ped2/train")
    parser.add_argument("workdir", metavar="WORKDIR", help="checkpoint/final/ and direct-results.json go here")
    parser.add_argument("--size", type=int, default=227, help="frame size S (11 + 8k; default 227, the paper's)")
    parser.add_argument("--test", default=None, help="folder of test videos (diagnostics only)")
    parser.add_argument("--labels", default=None, help="frame labels CSV of the test videos (diagnostics only)")
    parser.add_argument("--model", default="convlstm_ae", choices=names(),
                        help="architecture: convlstm_ae (default) or conv_ae")
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs (default 50, the paper's)")
    parser.add_argument("--patience", type=int, default=10, help="early stop after this many epochs without a better validation loss")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch (default 64)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--strides", default="1,2,3", help="temporal strides of the training volumes")
    parser.add_argument("--train-hop", type=int, default=1, help="frames between training volume starts")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of the training VIDEOS held out")
    parser.add_argument("--hop", type=int, default=5, help="scoring hop of the diagnostics (as vadray score)")
    parser.add_argument("--select", choices=SELECTIONS, default="val_loss",
                        help="epoch choice on the validation videos, as `vadray train --select`")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training after which no new epoch starts (the card says so)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")


# ---------------------------------------------------------------------------- data

def decode_videos(source: str, size: int) -> tuple[list[str], list[np.ndarray]]:
    """(video ids, frames uint8 (N, S, S) per video) of every video under `source`, decoded
    exactly as an ingest decode task does (one segment per video)."""
    from vadray.decode import decode_segment
    from vadray.probe import probe
    from vadray.listing import list_videos

    refs = [r for r in list_videos(source) if not r.is_frame_folder]
    if not refs:
        raise UsageError(f"no video files under {source}")
    ids, frames = [], []
    for ref in refs:
        timeline = probe(ref.uri)
        decoded = decode_segment(ref.uri, timeline, 0, timeline.num_frames, size)
        if decoded.error or decoded.missing:
            raise UsageError(f"{ref.uri}: {decoded.error or decoded.missing}")
        ids.append(ref.video_id)
        frames.append(decoded.frames)
    return ids, frames


def volume_index(lengths: list[int], T: int, strides, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, strides) (V,) of every volume of videos laid end to end in one frame tensor;
    per video exactly `volume_starts(n, T, stride, hop, cover_end=False)`, never across videos."""
    starts, steps, offset = [], [], 0
    for n in lengths:
        for s in strides:
            local = volume_starts(n, T, s, hop, cover_end=False)
            starts.append(local + offset)
            steps.append(np.full(len(local), s, np.int64))
        offset += n
    return np.concatenate(starts), np.concatenate(steps)


def gather(frames: torch.Tensor, starts: torch.Tensor, strides: torch.Tensor, T: int) -> torch.Tensor:
    """frames (N, S, S) on the device → volumes (B, T, S, S), same dtype."""
    offsets = torch.arange(T, device=frames.device)
    return frames[starts[:, None] + strides[:, None] * offsets[None, :]]


# ---------------------------------------------------------------------------- training

class Trainer:
    """The `vadray train` step and epoch on one device, with the frames resident there."""

    def __init__(self, model, stats, device: torch.device, lr: float, batch_size: int, seed: int):
        self.model, self.device, self.batch_size = model.to(device), device, batch_size
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.mean_image = torch.from_numpy(stats.mean_image).to(device)
        self.std = stats.std
        self.generator = torch.Generator().manual_seed(seed)

    def reconstruct(self, volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reconstruct(self.model, volumes, self.mean_image, self.std)  # (B, T, 1, S, S) each

    def train_epoch(self, frames: torch.Tensor, starts: np.ndarray, strides: np.ndarray, T: int) -> tuple[float, int]:
        self.model.train()
        order = torch.randperm(len(starts), generator=self.generator)
        starts_t = torch.from_numpy(starts)[order].to(self.device)
        strides_t = torch.from_numpy(strides)[order].to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(0, len(starts), self.batch_size):
            volumes = gather(frames, starts_t[i:i + self.batch_size], strides_t[i:i + self.batch_size], T)
            x, y = self.reconstruct(volumes)
            loss = torch.nn.functional.mse_loss(y, x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach().double() * len(volumes)
        return total.item() / max(1, len(starts)), len(starts)

    def validate(self, frames: torch.Tensor, starts: np.ndarray, strides: np.ndarray, T: int,
                 select: str, seed: int) -> tuple[float, float | None]:
        """(validation loss, synthetic-anomaly AUC or None): `steps.validation_pass`."""
        self.model.eval()
        batches = (gather(frames, torch.from_numpy(starts[i:i + self.batch_size]).to(self.device),
                          torch.from_numpy(strides[i:i + self.batch_size]).to(self.device), T)
                   for i in range(0, len(starts), self.batch_size))
        total, count, auc, _ = validation_pass(batches, self.reconstruct, PASTES.get(select), seed)
        return (total / count if count else math.nan), (auc if select in PASTES else None)

    def score_video(self, frames: np.ndarray, T: int, hop: int, cover_end: bool = True) -> scoring.FrameMeans:
        """Per-frame errors of one video as `vadray score` computes them: stride-1 volumes every
        `hop` frames, `scoring.volume_sums` of each batch, the mean over volumes. Without
        `cover_end`, as the card's calibration computes them (no extra volume on the last frame)."""
        return self.frame_sums(frames, T, hop, cover_end).mean()

    def frame_sums(self, frames: np.ndarray, T: int, hop: int, cover_end: bool = True) -> scoring.FrameSums:
        """`score_video` before the mean: every (frame, position in the volume) error."""
        self.model.eval()
        starts = volume_starts(len(frames), T, 1, hop, cover_end)
        frames_t = torch.from_numpy(frames).to(self.device)
        starts_t = torch.from_numpy(starts).to(self.device)
        batches = ((starts[i:i + self.batch_size],
                    gather(frames_t, starts_t[i:i + self.batch_size],
                           torch.ones_like(starts_t[i:i + self.batch_size]), T))
                   for i in range(0, len(starts), self.batch_size))
        return steps.frame_sums(batches, self.reconstruct, T)


# ---------------------------------------------------------------------------- diagnostics

def test_metrics(trainer: Trainer, test_ids: list[str], test_frames: list[np.ndarray], labels, T: int,
                 hop: int) -> tuple[dict, float]:
    """Frame AUC/EER of the `frames` table's score columns on the test videos, as `vadray
    evaluate` computes them; and the frames/s of this scoring pass."""
    from vadray.evaluate import SCORE_COLUMNS, column_metrics

    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    per_video = [trainer.score_video(f, T, hop) for f in test_frames]
    seconds = time.perf_counter() - started
    ids, truth, columns = [], [], {name: [] for name in SCORE_COLUMNS}
    for video_id, means in zip(test_ids, per_video):
        lab = labels.get(video_id)
        if lab is None:
            continue
        known = np.isin(means.frame_index, lab.index.to_numpy())
        ids.append(np.full(int(known.sum()), video_id))
        truth.append(lab.loc[means.frame_index[known]].to_numpy())
        scores = scoring.score_columns(means, validation=None)   # no calibration before the end
        scores["anomaly_score"] = scores["recon_error"]          # ranks frames as the calibrated score
        for name in SCORE_COLUMNS:
            columns[name].append(scores[name][known])
    result = {}
    for name, parts in columns.items():
        m = column_metrics(name, np.concatenate(ids), np.concatenate(truth), np.concatenate(parts))
        result[name] = {k: m[k] for k in ("auc", "auc_macro", "eer", "frames")}
    return result, sum(len(f) for f in test_frames) / seconds


def read_labels(path: str) -> dict:
    from vadray.evaluate import read_labels as read

    table = read(path)
    return {v: g.set_index("frame_index")["label"] for v, g in table.groupby("video_id")}


# ---------------------------------------------------------------------------- command

def _write(path: str, doc: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no GPU")
    return torch.device(name)


def _check(args: argparse.Namespace) -> None:
    from vadray.models import check_size

    if args.epochs < 1 or args.patience < 1 or args.batch_size < 1 or args.train_hop < 1 or args.hop < 1:
        raise UsageError("--epochs, --patience, --batch-size, --train-hop and --hop must be positive")
    if (args.test is None) != (args.labels is None):
        raise UsageError("--test and --labels go together")
    try:
        check_size(args.model, args.size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    args.strides_list = parse_strides(args.strides)


def calibration_errors(trainer: Trainer, frames: list[np.ndarray], T: int) -> dict:
    """Per-frame errors of held-out normal videos for the card, as `calibration` computes them
    for `vadray train`: stride-1 volumes at scoring's default hop, no extra volume on the last
    frame, the mean over the volumes containing a frame. The same definition in both trainers,
    so anomaly_score's scale does not depend on which one made the checkpoint."""
    per_video = [trainer.score_video(f, T, scoring.SCORE_HOP, cover_end=False) for f in frames]
    return {"recon_error": np.concatenate([m.recon_error for m in per_video]),
            "cell_error_max": np.concatenate([m.cell_error_max for m in per_video])}


def run(args: argparse.Namespace) -> int:
    from vadray.checkpoint import FINAL_DIR, model_card, save
    from vadray.models import build, spec
    from vadray.preprocess import NormStats, PartialSums
    from vadray.steps import DIVERGED_WHY, end_of_epoch, fresh_state, selection_value

    _check(args)
    device = _device(args.device)
    T, strides = T_DEFAULT, args.strides_list
    loaded = time.perf_counter()
    ids, frames = decode_videos(args.train, args.size)
    videos = [VideoShards(v, len(f), []) for v, f in zip(ids, frames)]
    stats = NormStats.from_sums(sum((PartialSums.of(f) for f in frames[1:]), PartialSums.of(frames[0])))
    info = Shards(args.train, stats, {"source": args.train, "videos": len(ids)}, args.size, videos)
    train_videos, val_videos = split_by_video(videos, args.val_fraction)
    frames_of = dict(zip(ids, frames))
    train_frames = [frames_of[v.video_id] for v in train_videos]
    val_frames = [frames_of[v.video_id] for v in val_videos]
    train_starts, train_strides = volume_index([len(f) for f in train_frames], T, strides, args.train_hop)
    val_starts, val_strides = volume_index([len(f) for f in val_frames], T, [1], T)
    train_t = torch.from_numpy(np.concatenate(train_frames)).to(device)
    val_t = torch.from_numpy(np.concatenate(val_frames)).to(device) if val_frames else None
    test = (*decode_videos(args.test, args.size), read_labels(args.labels)) if args.test else None
    load_seconds = time.perf_counter() - loaded

    os.makedirs(args.workdir, exist_ok=True)
    results_path = os.path.join(args.workdir, "direct-results.json")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"[direct] {device_name}: {len(train_videos)} train videos ({len(train_starts)} volumes/epoch), "
          f"{len(val_videos)} validation videos ({len(val_starts)} volumes), {args.size} px, "
          f"decoded in {load_seconds:.1f} s", flush=True)
    model = build(args.model)
    model_spec = spec(model)
    trainer = Trainer(model, stats, device, args.lr, args.batch_size, args.seed)
    state, best_weights, diagnostics = fresh_state(), None, []
    doc = {"benchmark": "ped2-direct", "device": device_name, "torch": torch.__version__,
           "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
           "volumes_per_epoch": len(train_starts), "decode_seconds": load_seconds}
    # The test diagnostics' time is kept apart: the time budget, and so the epochs run and the
    # one kept, must not depend on whether --test was given.
    started, diagnostic_seconds = time.perf_counter(), 0.0
    while state["epoch"] < args.epochs and not state["stopped"]:
        epoch, epoch_started = state["epoch"] + 1, time.perf_counter()
        train_loss, n = trainer.train_epoch(train_t, train_starts, train_strides, T)
        seconds = time.perf_counter() - epoch_started
        val_loss = synthetic_auc = None
        if val_t is not None:
            val_loss, synthetic_auc = trainer.validate(val_t, val_starts, val_strides, T,
                                                       args.select, args.seed)
        state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                 "synthetic_auc": synthetic_auc, "train_volumes": n, "train_seconds": seconds})
        state["step"] += math.ceil(n / args.batch_size)
        end_of_epoch(state, epoch, selection_value(args.select, train_loss, val_loss, synthetic_auc),
                     args.patience)
        if state["best_epoch"] == epoch:
            best_weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        line = (f"[direct] epoch {epoch}/{args.epochs} train {train_loss:.5f} val "
                f"{val_loss if val_loss is None else round(val_loss, 5)} "
                + (f"synthetic AUC {synthetic_auc:.4f} " if synthetic_auc is not None else "")
                + f"best {state['best_epoch']} "
                f"{n / seconds:.0f} volumes/s")
        if test is not None:
            diagnosed = time.perf_counter()
            aucs, fps = test_metrics(trainer, *test, T, args.hop)
            diagnostic_seconds += time.perf_counter() - diagnosed
            diagnostics.append({"epoch": epoch, "scoring_fps": fps, **aucs})
            line += (f" | test AUC (diagnostic, not used) regularity {aucs['regularity']['auc']:.4f} "
                     f"anomaly {aucs['anomaly_score']['auc']:.4f} cell {aucs['cell_error_max']['auc']:.4f} "
                     f"motion {aucs['motion_regularity']['auc']:.4f}")
        print(line, flush=True)
        elapsed = time.perf_counter() - started - diagnostic_seconds
        if args.time_budget and not state["stopped"] and elapsed + seconds > args.time_budget:
            state["stopped"] = "time_budget"
        _write(results_path, dict(doc, history=state["history"], best_epoch=state["best_epoch"],
                                  diagnostics_not_used_for_selection=diagnostics, train_seconds=elapsed,
                                  diagnostic_seconds=diagnostic_seconds))
    train_seconds = time.perf_counter() - started - diagnostic_seconds

    if best_weights is None:   # the loss was never finite (as `vadray train`: nothing is saved)
        raise JobFailed(f"training diverged: the loss was {DIVERGED_WHY} from epoch 1 on ({state['history'][-1]})")
    trainer.model.load_state_dict(best_weights)
    errors = calibration_errors(trainer, val_frames or train_frames, T)
    settings = {"shards": args.train, "model": args.model, "model_params": {}, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience, "strides": strides,
                "hop": args.train_hop, "val_fraction": args.val_fraction, "seed": args.seed, "T": T,
                "select": args.select}
    outcome = {"state": state, "best_metrics": {"epoch": state["best_epoch"], "selection_loss": state["best_loss"]}}
    card = model_card(info, settings, model_spec, best_weights, outcome, errors, train_videos, val_videos,
                      len(train_starts), f"direct-{int(time.time())}", workers=1,
                      gpus_per_worker=1 if device.type == "cuda" else 0, device=device_name,
                      trainer="single process, no Ray (vadray bench ped2-direct)")
    final_dir = os.path.join(args.workdir, "checkpoint", FINAL_DIR)
    save(final_dir, best_weights, card)

    final = None
    if test is not None:
        final, fps = test_metrics(trainer, *test, T, args.hop)
        final["scoring_fps_on_device"] = fps
    doc.update(history=state["history"], best_epoch=state["best_epoch"], epochs_run=state["epoch"],
               stopped=state["stopped"] or "max_epochs", train_seconds=train_seconds,
               model_id=card["model_id"], diagnostics_not_used_for_selection=diagnostics,
               best_epoch_test_metrics=final)
    _write(results_path, doc)
    print(f"[direct] best epoch {state['best_epoch']} of {state['epoch']} by {args.select} "
          f"({doc['stopped']}), {train_seconds:.0f} s of training; model {card['model_id']} → {final_dir}",
          flush=True)
    if final is not None:
        print("[direct] test at the chosen epoch: " + ", ".join(
            f"{k} AUC {v['auc']:.4f} EER {v['eer']:.4f}" for k, v in final.items() if isinstance(v, dict))
            + f"; scoring {final['scoring_fps_on_device']:.0f} frames/s on {device_name}", flush=True)
    return 0
