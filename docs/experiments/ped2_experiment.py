"""What the Ped2 score experiments share: a checkpoint, Ped2 decoded at its size, scoring's own
math (`ped2_direct.Trainer.score_video`), and the frame AUC of a score against the test labels.
The labels only measure; nothing in these experiments is chosen with them."""
import argparse

import numpy as np
import torch

from vadray import metrics
from vadray.bench.ped2_direct import Trainer, decode_videos, read_labels
from vadray.checkpoint import load_model
from vadray.preprocess import NormStats
from vadray.scoring import FrameMeans, FrameSums


class Ped2Experiment:
    def __init__(self, description: str, default_hop: int, flags: tuple[tuple[str, str], ...] = ()):
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("checkpoint")
        parser.add_argument("ped2", help="folder with train/, test/ and test/frame_labels.csv")
        parser.add_argument("--hop", type=int, default=default_hop)
        for flag, help_text in flags:
            parser.add_argument(flag, action="store_true", help=help_text)
        self.args = args = parser.parse_args()
        model, self.card = load_model(args.checkpoint)
        self.stats = NormStats.from_dict(self.card["norm_stats"])
        self.trainer = Trainer(model, self.stats, torch.device("cpu"), 1e-4, 16, 0)
        self.ped2, self.hop = args.ped2, args.hop
        self.val_ids = set(self.card["training_data"]["val_video_ids"])
        self.labels = read_labels(f"{args.ped2}/test/frame_labels.csv")

    def videos(self, split: str) -> dict[str, np.ndarray]:
        """video id → uint8 (N, S, S) frames of Ped2's train/ or test/."""
        ids, frames = decode_videos(f"{self.ped2}/{split}", self.card["input"]["size"])
        return dict(zip(ids, frames))

    def score(self, frames: np.ndarray) -> FrameMeans:
        return self.trainer.score_video(frames, self.card["input"]["T"], self.hop)

    def frame_sums(self, frames: np.ndarray, hop: int | None = None) -> FrameSums:
        return self.trainer.frame_sums(frames, self.card["input"]["T"], hop or self.hop)

    def report(self, name: str, scores: dict[str, np.ndarray], frame_index: dict[str, np.ndarray]) -> None:
        """Pooled and per-video-mean frame AUC and EER of test `scores` (higher: more anomalous)."""
        ids = np.concatenate([np.full(len(s), v) for v, s in scores.items()])
        truth = np.concatenate([self.labels[v].loc[frame_index[v]].to_numpy() for v in scores])
        m = metrics.frame_metrics(ids, truth, np.concatenate(list(scores.values())))
        print(f"{name:55s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}  EER {m['eer']:.4f}")
