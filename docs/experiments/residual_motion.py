"""Experiment (not part of the product): the temporal change of the reconstruction residual.

    python docs/experiments/residual_motion.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 5]

The survey's complaint: "a sudden motion of normal objects barely moves the score". The
paper's e(t) = ‖x_t − x̂_t‖ also counts what the model gets steadily wrong (a slow walker's
blurred outline, the pavement's texture). Here, within each volume, the residual
r_t = x_t − x̂_t is differenced in time, m(t) = ‖r_t − r_{t−1}‖₂ over the pixels: a residual
that stays put cancels, one that moves (an object faster than the model can follow) does not.
m is the mean over the volumes that hold frame t (frame t−1 in the same volume), then
normalised per video exactly as the paper's regularity. Defined once, before it was run;
the test labels only measure. It measured 0.791 (59 px) and 0.846 (227 px) against the paper's
0.837 and 0.791, and became the product's `motion_error` / `motion_regularity`
(`scoring.motion_errors`), where a volume's first frame takes its second frame's value instead
of having none (so every slot is filled): 0.784 and 0.849 there.
"""
import numpy as np
import torch

from ped2_experiment import Ped2Experiment
from vadray import scoring
from vadray.bench.ped2_direct import gather
from vadray.volumes import volume_starts


def residual_motion(exp: Ped2Experiment, frames: np.ndarray) -> np.ndarray:
    """(N,) m(t) of one video; frame 0 (no predecessor in any volume) takes frame 1's value."""
    T = exp.card["input"]["T"]
    trainer = exp.trainer
    trainer.model.eval()
    starts = volume_starts(len(frames), T, 1, exp.hop)
    frames_t = torch.from_numpy(frames)
    total, count = np.zeros(len(frames)), np.zeros(len(frames))
    for i in range(0, len(starts), trainer.batch_size):
        s = torch.from_numpy(starts[i:i + trainer.batch_size])
        with torch.inference_mode():
            x, y = (t.cpu().numpy() for t in trainer.reconstruct(gather(frames_t, s, torch.ones_like(s), T)))
        r = (x - y).reshape(len(s), T, -1).astype(np.float64)
        m = np.sqrt(np.square(np.diff(r, axis=1)).sum(axis=-1))          # (V, T-1): frames 1..T-1
        where = starts[i:i + trainer.batch_size, None] + np.arange(1, T)[None, :]
        np.add.at(total, where, m)
        np.add.at(count, where, 1)
    out = total / np.maximum(count, 1)
    out[count == 0] = out[np.flatnonzero(count)[0]]
    return out


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=5)
    test = exp.videos("test")
    paper = {v: exp.score(f) for v, f in test.items()}
    index = {v: m.frame_index for v, m in paper.items()}
    exp.report("paper's regularity (1 - s_r)", {v: 1 - scoring.regularity(m.recon_error) for v, m in paper.items()},
               index)
    motion = {v: residual_motion(exp, f)[index[v]] for v, f in test.items()}
    exp.report("residual motion m(t), raw", motion, index)
    exp.report("residual motion, per-video min-max as the paper", {v: 1 - scoring.regularity(m)
                                                                  for v, m in motion.items()}, index)


if __name__ == "__main__":
    main()
