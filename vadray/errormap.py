"""Where in a frame the model failed: the squared reconstruction error map of one frame.

For reports: decode the stride-1 volume centred on the frame with the same decoder as
scoring, reconstruct it with the model step scoring uses (`steps.reconstruct`), and return
the frame's (S, S) squared error. Frames are not gain-corrected (`score --gain-correction`):
the map shows what the model saw of the footage as recorded.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vadray.exits import UsageError


class ErrorMaps:
    """error_map(source_uri, frame_index) -> (S, S) float32, or None if the source is unreadable."""

    def __init__(self, checkpoint: str, storage_options: dict[str, Any] | None = None):
        from vadray.checkpoint import load_for_job
        from vadray.preprocess import NormStats
        from vadray.steps import Reconstructor

        model, card = load_for_job(checkpoint, storage_options)
        self.model_id = card["model_id"]   # report checks it against the scores' model
        self.reconstruct = Reconstructor(model, NormStats.from_dict(card["norm_stats"]))
        self.stats = self.reconstruct.stats
        self.T = int(card["input"]["T"])
        self.storage_options = storage_options

    def __call__(self, source_uri: str, frame_index: int) -> np.ndarray | None:
        import torch

        from vadray.decode import decode_frame_files, decode_segment
        from vadray.probe import InputError, frame_folder_timeline, probe
        from vadray.listing import frame_folder

        try:
            clip = frame_folder(source_uri, self.storage_options)
            if clip is not None:   # a UCSD-style folder of stills; its fps does not matter here
                timeline = frame_folder_timeline(clip.frame_uris, 10.0, self.T)
            else:
                timeline = probe(source_uri, self.T, self.storage_options)
        except (InputError, OSError, UsageError):   # unreadable or unlistable: no map, the report goes on
            return None
        start = int(np.clip(frame_index - self.T // 2, 0, timeline.num_frames - self.T))
        if clip is not None:
            decoded = decode_frame_files(clip.frame_uris, timeline, start, start + self.T, self.stats.size,
                                         self.storage_options)
        else:
            decoded = decode_segment(source_uri, timeline, start, start + self.T, self.stats.size,
                                     self.storage_options)
        if decoded.frames.shape[0] != self.T:
            return None
        with torch.inference_mode():
            x, y = self.reconstruct(decoded.frames[None])
        return np.square((x - y)[0, frame_index - start, 0].numpy()).astype(np.float32)
