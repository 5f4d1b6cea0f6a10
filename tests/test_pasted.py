"""Synthetic anomalies for choosing the epoch on normal footage (vadray/pasted.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vadray.pasted import PASTES, gliding_twins, paste_fast_patches, paste_gliding_objects, twin_auc, volume_errors
from vadray.steps import selection_value, validation_pass


def _volumes(b: int = 3, t: int = 10, s: int = 35, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t, s, s), dtype=np.uint8))


def _changed_boxes(before: torch.Tensor, after: torch.Tensor) -> list[tuple[int, int, int, int]]:
    boxes = []
    for k in range(before.shape[0]):
        ys, xs = np.nonzero((before[k] != after[k]).numpy())
        boxes.append((ys.min(), ys.max(), xs.min(), xs.max()))
    return boxes


def test_one_patch_per_frame_moves_fast_and_the_input_is_untouched():
    volumes = _volumes()
    original = volumes.clone()
    pasted = paste_fast_patches(volumes, seed=5)
    assert torch.equal(volumes, original)
    p = round(35 / 6)
    for i in range(len(volumes)):
        boxes = _changed_boxes(volumes[i], pasted[i])   # noise: every pasted pixel differs
        for y0, y1, x0, x1 in boxes:
            assert y1 - y0 < p and x1 - x0 < p         # within one p×p patch
        (fy, _, fx, _), (ly, _, lx, _) = boxes[0], boxes[-1]
        assert math.hypot(ly - fy, lx - fx) >= 35 / 2 - 2  # crossed half the frame in T frames


def test_a_volume_gets_the_same_patch_however_it_is_batched():
    volumes = _volumes(b=4)
    together = paste_fast_patches(volumes, seed=1)
    alone = torch.cat([paste_fast_patches(volumes[i:i + 1], seed=1) for i in (2, 0, 3, 1)])
    assert torch.equal(together[[2, 0, 3, 1]], alone)
    assert not torch.equal(paste_fast_patches(volumes, seed=2), together)


def test_frames_too_small_for_a_patch_are_refused():
    with pytest.raises(ValueError, match="too small"):
        paste_fast_patches(_volumes(s=2), seed=0, patch_fraction=1.0)


def test_twin_auc_and_volume_errors():
    assert twin_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert twin_auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    x = torch.zeros(2, 3, 1, 4, 4)
    y = torch.zeros_like(x)
    y[1, :, 0, 0, 0] = 2.0                              # each frame of volume 1 is off by 2 in one pixel
    assert volume_errors(x, y).tolist() == [0.0, 2.0]


def test_validation_pass_with_a_model_that_copies_its_input_cannot_tell_twins_apart():
    batches = [_volumes(b=2, seed=s) for s in range(3)]
    identity = lambda v: (v.float().unsqueeze(2), v.float().unsqueeze(2))  # noqa: E731
    for paste in PASTES.values():
        total, count, auc, n = validation_pass(iter(batches), identity, paste, seed=0)
        assert (total, count, n, auc) == (0.0, 6, 6, 0.5)
    blurred = lambda v: (v.float().unsqueeze(2), torch.full_like(v.float(), 128.0).unsqueeze(2))  # noqa: E731
    _, _, auc, _ = validation_pass(iter(batches), blurred, None, seed=0)
    assert math.isnan(auc)


def _scene_with_walker(b: int = 2, t: int = 10, s: int = 59) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Flat grey scene (120) with one dark 10×5 "walker" per volume stepping 2 px per frame."""
    volumes = torch.full((b, t, s, s), 120, dtype=torch.uint8)
    starts = [(20 + 5 * i, 15 + 7 * i) for i in range(b)]
    for i, (y, x) in enumerate(starts):
        for k in range(t):
            volumes[i, k, y:y + 10, x + 2 * k:x + 2 * k + 5] = 30
    return volumes, starts


def test_gliding_object_is_the_walker_moving_a_quarter_frame_without_its_box():
    volumes, starts = _scene_with_walker()
    original = volumes.clone()
    pasted = paste_gliding_objects(volumes, seed=3)
    assert torch.equal(volumes, original)
    assert torch.equal(pasted[:, 0], volumes[:, 0])          # it starts where the walker is
    for i, (y, x) in enumerate(starts):
        added = (pasted[i, -1] != volumes[i, -1]).nonzero()
        # only dark object pixels are pasted (the background around it is not): at most h×w
        assert 0 < len(added) <= 10 * 5 and set(pasted[i, -1][pasted[i, -1] != volumes[i, -1]].tolist()) == {30}
        # the clone's first-frame pose ends a quarter of the frame away (the walker itself moved 18 px)
        first = torch.tensor([y + 4.5, x + 2.0])
        end = (pasted[i, -1] != volumes[i, -1]).nonzero().float().mean(dim=0)
        assert abs(float((end - first).norm()) - 59 / 4) <= 3, (end, first)


def test_gliding_twins_differ_and_do_not_depend_on_batching():
    volumes, _ = _scene_with_walker(b=3)
    together = paste_gliding_objects(volumes, seed=1, twin=2)
    alone = torch.cat([paste_gliding_objects(volumes[i:i + 1], seed=1, twin=2) for i in (2, 0, 1)])
    assert torch.equal(together[[2, 0, 1]], alone)
    assert not torch.equal(paste_gliding_objects(volumes, seed=1, twin=3), together)
    assert torch.equal(gliding_twins(volumes, seed=1, twins=range(4))[2], together)  # found once, same pixels
    with pytest.raises(ValueError, match="too small"):
        paste_gliding_objects(volumes[:, :, :2, :2], seed=0)


def test_selection_value():
    assert selection_value("val_loss", 3.0, 2.0, 0.9) == 2.0
    assert selection_value("synthetic", 3.0, 2.0, 0.9) == pytest.approx(-0.9, abs=1e-8)
    assert selection_value("synthetic", 3.0, 1.0, 0.9) < selection_value("synthetic", 3.0, 2.0, 0.9)  # tie-break
    assert selection_value("synthetic", 3.0, 2.0, float("nan")) == 2.0   # fall back to the loss
    assert selection_value("synthetic", 3.0, None, None) == 3.0           # no validation videos
    assert selection_value("synthetic_gliding", 3.0, 2.0, 0.7) == pytest.approx(-0.7, abs=1e-8)
