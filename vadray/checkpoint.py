"""Self-describing checkpoints: `model.pt` (a plain state_dict) + `card.json` (the model card).

Loading never unpickles arbitrary objects: weights go through `torch.load(weights_only=True)`
and everything else is JSON. The card carries what scoring needs to reproduce training's
input exactly (size, T, normalisation statistics) and to calibrate scores (the validation
reconstruction-error distribution), so evaluation and archive scoring cannot drift.

Layout of a training run's CHECKPOINT_DIR (local or s3://):
    run/            Ray Train's own checkpoints (per epoch: model.pt, optimizer.pt, state.json)
    run.json        the job's settings and run id (what --resume continues)
    final/          model.pt + card.json of the chosen epoch (best validation loss, or --select's signal)
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import re
from datetime import datetime, timezone

import numpy as np
import torch
from torch import nn

from vadray import __version__, storage
from vadray.metrics import finite_or_none
from vadray.models import build
from vadray.pasted import PASTES
from vadray.scoring import GRID_DEFAULT, SCORE_HOP

MODEL_FILE = "model.pt"
CARD_FILE = "card.json"
FINAL_DIR = "final"
CARD_FORMAT = "vadray-model-card/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or similar) wrapper: its state_dict has no 'module.'."""
    return getattr(model, "module", model)


def weights_to_bytes(state_dict: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def weights_from_bytes(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def model_id(name: str, state_dict: dict) -> str:
    """`<name>-<12 hex>`: a hash of the tensors' names and bytes, not of torch.save's zip."""
    digest = hashlib.sha1()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else
                      tensor.float().numpy().tobytes())
    return f"{name}-{digest.hexdigest()[:12]}"


def library_versions() -> dict:
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:  # the single-process trainer runs where Ray is not installed
        ray_version = None
    return {"torch": torch.__version__, "ray": ray_version, "numpy": np.__version__,
            "vadray": __version__, "python": platform.python_version()}


def distribution(values: np.ndarray, quantiles=(0.5, 0.9, 0.95, 0.99, 0.999)) -> dict:
    """{mean, std, quantiles{"0.5": …}, n} of the finite values, for the card (JSON floats)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "quantiles": {str(q): None for q in quantiles}, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()),
            "quantiles": {str(q): float(np.quantile(v, q)) for q in quantiles}, "n": int(v.size)}


def save(folder_uri: str, state_dict: dict, card: dict, storage_options: dict | None = None) -> None:
    """Write model.pt and card.json into folder_uri (weights first: a card means complete)."""
    fs, path = storage.url_to_fs(folder_uri, storage_options)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{MODEL_FILE}", weights_to_bytes(state_dict))
    # Strict JSON: a diverged epoch's NaN loss is written as null, never as a bare NaN
    fs.pipe_file(f"{path}/{CARD_FILE}", json.dumps(finite_or_none(card), indent=2, allow_nan=False).encode())


def _checkpoint_folder(fs, path: str) -> str:
    for candidate in (f"{path}/{FINAL_DIR}", path):
        if fs.exists(f"{candidate}/{CARD_FILE}") and fs.exists(f"{candidate}/{MODEL_FILE}"):
            return candidate
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if not fs.isdir(path):
        raise FileNotFoundError(f"{path} is a file: give the folder that holds {MODEL_FILE} + {CARD_FILE} "
                                f"(or the training run's CHECKPOINT_DIR)")
    raise FileNotFoundError(f"{path} holds no {MODEL_FILE} + {CARD_FILE}, nor a {FINAL_DIR}/ with "
                            f"them: is it a finished training run's CHECKPOINT_DIR?")


MODEL_ID = re.compile(r"[a-z0-9_]+-[0-9a-f]{12}")


def _checked_card(card: dict) -> dict:
    """What every job reads from a card, checked once where it is loaded, so that a hand-edited
    or damaged card is one clear error and not a traceback inside a model actor. The model id
    names the output files of every video scored: it must be `<model>-<12 hex>`, never a path
    (a crafted card wrote outside OUTPUT)."""
    from vadray.models import check_size
    from vadray.preprocess import NormStats

    if not isinstance(card, dict):
        raise ValueError("card.json is not a JSON object")
    if not isinstance(card.get("model_id"), str) or not MODEL_ID.fullmatch(card["model_id"]):
        raise ValueError(f"card.json's model_id {str(card.get('model_id'))[:80]!r} is not <model>-<12 hex digits>")
    model, given = card.get("model"), card.get("input")
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise ValueError("card.json's model is not {name, params}")
    if not isinstance(given, dict) or not all(type(given.get(k)) is int for k in ("size", "T")) or given["T"] < 1:
        raise ValueError(f"card.json's input {str(given)[:80]} needs an integer size and T >= 1")
    check_size(str(model.get("name")), given["size"])
    try:
        stats = NormStats.from_dict(card["norm_stats"])
    except (KeyError, TypeError, ValueError) as exc:   # missing, bad base64, a wrong shape
        raise ValueError(f"card.json's norm_stats cannot be read: {type(exc).__name__}: {exc}") from None
    if stats.size != given["size"]:
        raise ValueError(f"card.json's norm_stats are for {stats.size}×{stats.size} frames, its input for "
                         f"{given['size']}×{given['size']}")
    return card


def read_card(path: str, storage_options: dict | None = None) -> dict:
    fs, fs_path = storage.url_to_fs(path, storage_options)
    return _checked_card(json.loads(fs.cat_file(f"{_checkpoint_folder(fs, fs_path)}/{CARD_FILE}")))


def load_model(path: str, storage_options: dict | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on the CPU, card) from CHECKPOINT_DIR or a checkpoint folder. The
    card's model_id must be the weights' own (`model_id`): the id that names the tables is
    the model that made them."""
    path = storage.text(path)
    fs, fs_path = storage.url_to_fs(path, storage_options)
    folder = _checkpoint_folder(fs, fs_path)
    card = _checked_card(json.loads(fs.cat_file(f"{folder}/{CARD_FILE}")))
    model = build(card["model"]["name"], **card["model"]["params"])
    model.load_state_dict(weights_from_bytes(fs.cat_file(f"{folder}/{MODEL_FILE}")))
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        raise ValueError(f"{MODEL_FILE} holds NaN or infinite weights (a training run that diverged)")
    if model_id(card["model"]["name"], model.state_dict()) != card["model_id"]:
        raise ValueError(f"card.json's model_id {card['model_id']} is not the id of the weights in {MODEL_FILE}")
    return model.eval(), card


def load_for_job(path: str, storage_options: dict | None = None) -> tuple[nn.Module, dict]:
    """`load_model` for a job's --checkpoint: whatever makes it unloadable (missing, not a
    checkpoint, a pickle in model.pt, bad params, an id that is not its weights') is a
    UsageError (exit status 2) that says so, before any work."""
    import pickle

    from vadray.exits import UsageError

    try:
        return load_model(path, storage_options)
    except (FileNotFoundError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
            pickle.UnpicklingError) as exc:
        raise UsageError(f"cannot read checkpoint {path!r}: {type(exc).__name__}: {exc}") from None


def model_card(info, settings: dict, model_spec: dict, state_dict: dict, outcome: dict, errors: dict,
                train_videos: list, val_videos: list, n_train: int, run_id: str, **execution) -> dict:
    """The JSON card of docs/ARCHITECTURE.md "Checkpoints" (plus a few extras for people).

    `info` is the `trainvolumes.Shards` trained on; `outcome` {"state": the loop state, "best_metrics":
    {"epoch", "selection_loss"}}; `errors` the validation frame errors (`calibration`).
    Shared by the Ray Train job and the single-process trainer (`vadray.bench.ped2_direct`)."""
    state, best = outcome["state"], outcome["best_metrics"]
    best_row = next((h for h in state["history"] if h["epoch"] == int(best["epoch"])), {})
    by_synthetic = settings.get("select") in PASTES and best_row.get("synthetic_auc") is not None
    val_loss = best_row.get("val_loss")   # NaN where the validation videos held no whole volume
    by_validation = bool(val_videos) and val_loss is not None and math.isfinite(val_loss)
    train_frames, val_frames = (sum(v.num_frames for v in vs) for vs in (train_videos, val_videos))
    return {
        "format": CARD_FORMAT,
        "model": model_spec,
        "input": {"size": info.size, "T": settings["T"], "strides": settings["strides"],
                  "hop": settings["hop"], "channels": 1,
                  "normalisation": "(x/255 - mean_image) / std, global statistics of the training footage",
                  "output": "linear last layer, same units as the normalised input"},
        "norm_stats": info.stats.to_dict(),
        "training_data": {
            "source": info.stats_doc.get("source"), "shards": settings["shards"], "cameras": info.cameras,
            "videos": len(train_videos) + len(val_videos), "frames": train_frames + val_frames,
            "train_videos": len(train_videos), "train_frames": train_frames,
            "val_videos": len(val_videos), "val_frames": val_frames,
            "val_video_ids": [v.video_id for v in val_videos][:10000],
            "volumes_per_epoch": n_train},
        "training": {"optimizer": "adam", "lr": settings["lr"], "batch_size": settings["batch_size"],
                     "loss": "mean squared error over the volume, normalised units",
                     "max_epochs": settings["epochs"], "patience": settings["patience"],
                     "seed": settings["seed"], **execution,
                     "selection": (f"maximum synthetic-anomaly AUC on the validation videos (vadray.pasted, {settings['select']})"
                                   if by_synthetic else "minimum validation loss" if by_validation else
                                   "minimum training loss (no validation videos)" if not val_videos else
                                   "minimum training loss (the validation videos gave no volume)"),
                     "stopped": state["stopped"] or "max_epochs",
                     "resumed_after_epochs": state["resumed_after_epochs"],
                     "torch_threads_per_worker": state.get("torch_threads")},
        "epochs_run": len(state["history"]),
        "history": state["history"],
        "best_epoch": int(best["epoch"]),
        "best_val_loss": float(val_loss) if by_validation else None,
        "best_synthetic_auc": best_row.get("synthetic_auc"),
        "validation": {
            "on": errors.get("on") or ("validation videos" if val_videos else "training videos (no validation videos)"),
            "videos": errors.get("videos") or len(val_videos or train_videos), "volume_stride": 1,
            "volume_hop": SCORE_HOP,
            "grid": GRID_DEFAULT,
            "frame_error": distribution(errors["recon_error"]),
            "cell_error_max": distribution(errors["cell_error_max"])},
        "versions": library_versions(),
        "run_id": run_id,
        "model_id": model_id(model_spec["name"], state_dict),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
