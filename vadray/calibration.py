"""The validation reconstruction-error distribution of a trained model, for its model card.

After training, the best weights reconstruct every frame of the held-out validation videos;
scoring's own math (`vadray.scoring`: per-frame L2 error, 8×8 cell errors, the mean over the
stride-1 volumes containing a frame, volumes every `scoring.SCORE_HOP` frames as `vadray
score` takes them by default) turns that into per-frame errors, so the card's distribution is
on the scale archive scoring produces and `scoring.calibrate` can use it (the last frames of a
video, which scoring covers with one more volume, are left out here). One Ray Data task per
video; only per-frame errors come back to the driver.
"""
from __future__ import annotations

import json

import numpy as np

from vadray import storage
from vadray.preprocess import NormStats
from vadray.steps import Reconstructor, frame_sums
from vadray.trainvolumes import Shards, VideoShards, read_chunks, video_items
from vadray.volumes import stream_volumes


class ValidationFrameErrors:
    """Video rows → per-frame errors of a trained model (used by `validation_frame_errors`).

    The error math and the assembly over volumes are scoring's own (`vadray.scoring`), on
    stride-1 volumes at `scoring.SCORE_HOP`: each frame's error is the mean over the volumes
    containing it, so the card's distribution is on the scale archive scoring produces. Output rows:
    video_index, frame_index, recon_error, cell_error_max (normalised units).
    """

    def __init__(self, model_spec: dict, weights: bytes, stats: dict, clips_uri: str,
                 storage_options: dict | None, T: int, batch_size: int = 32, use_gpu: bool = False):
        from vadray.checkpoint import weights_from_bytes
        from vadray.models import build

        model = build(model_spec["name"], **model_spec["params"])
        model.load_state_dict(weights_from_bytes(weights))
        self.reconstruct = Reconstructor(model, NormStats.from_dict(stats), use_gpu)
        self.pa_fs, _ = storage.pyarrow_fs(clips_uri, storage_options)
        self.T, self.batch_size = T, batch_size

    def __call__(self, batch: dict) -> dict:
        from vadray import scoring

        out = {"video_index": [], "frame_index": [], "recon_error": [], "cell_error_max": []}
        for video_index, video_id, groups in zip(batch["video_index"], batch["video_id"], batch["file_groups"]):
            chunks = read_chunks(self.pa_fs, json.loads(groups), str(video_id))
            batches = ((starts[i:i + self.batch_size], volumes[i:i + self.batch_size])
                       for _, starts, volumes in stream_volumes(chunks, self.T, (1,), scoring.SCORE_HOP)
                       for i in range(0, len(starts), self.batch_size))
            sums = frame_sums(batches, self.reconstruct, self.T, motion=False)
            if not sums.frame_index.size:
                continue  # shorter than one volume
            means = sums.mean()
            out["video_index"].append(np.full(len(means.frame_index), video_index, np.int64))
            out["frame_index"].append(means.frame_index)
            out["recon_error"].append(means.recon_error.astype(np.float32))
            out["cell_error_max"].append(means.cell_error_max.astype(np.float32))
        empty = {"video_index": np.int64, "frame_index": np.int64, "recon_error": np.float32,
                 "cell_error_max": np.float32}
        return {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in out.items()}


def _validation_errors_task(batch: dict, **model_and_data) -> dict:
    """Ray Data task: a fresh model per video (cheap beside the video; no actor to start)."""
    return ValidationFrameErrors(**model_and_data)(batch)


def validation_frame_errors(shards: Shards, videos: list[VideoShards], model_spec: dict, weights: bytes,
                            T: int, storage_options: dict | None = None, use_gpu: bool = False) -> dict:
    """{recon_error, cell_error_max} (N,) float32 over every frame of `videos`, one Ray Data
    task per video (the frames stay in the tasks; only per-frame errors come back)."""
    import ray

    ds = ray.data.from_items(video_items(videos), override_num_blocks=max(1, len(videos))).map_batches(
        _validation_errors_task, batch_size=1, num_gpus=1 if use_gpu else 0,
        fn_kwargs={"model_spec": model_spec, "weights": weights, "stats": shards.stats.to_dict(),
                   "clips_uri": shards.clips_uri, "storage_options": storage_options, "T": T,
                   "use_gpu": use_gpu})
    rows = ds.select_columns(["recon_error", "cell_error_max"]).to_pandas()
    return {"recon_error": rows["recon_error"].to_numpy(np.float32),
            "cell_error_max": rows["cell_error_max"].to_numpy(np.float32)}
