"""Experiment (not part of the product): a per-frame gain correction against lighting changes.

    python docs/experiments/gain_correction.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 5]

failure_modes.py found that a ×1.3 brightness step reads as an anomaly in every score. Here,
before the model, each uint8 frame is divided by its gain against the training footage,
g_t = median(x_t) / median(255 · mean_image), and rounded back to uint8. The median ignores a
foreground that covers less than half of the frame, so an intruder barely moves g; a light that
brightens the whole scene moves it by the light's factor.

Written before the run, the expectations: with the correction, the brightness step's AUC falls
towards 0.5 for every score (below 0.7), the 3× speed figures stay within 0.02, and the Ped2
test AUC of `regularity` and `motion_regularity` moves by less than 0.01 (Ped2 has no lighting
changes, so g stays near 1). The test labels only measure. Run once per checkpoint.

After the 59-px run it went into the product unchanged (`NormStats.gain_corrected`, opt-in
`vadray score --gain-correction`); this script now calls that function.
"""
from failure_modes import brightness_step, measure, sudden_motion
from ped2_experiment import Ped2Experiment
from vadray import scoring


def then(alter, correct):
    """An alteration followed by the correction of its frames (the labels pass through)."""
    def altered(frames):
        frames, labels = alter(frames)
        return correct(frames), labels
    return altered


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=5)
    gain_corrected = exp.stats.gain_corrected   # the product's `vadray score --gain-correction`
    train = exp.videos("train")
    print(f"checkpoint: size {exp.card['input']['size']}; all 16 training videos")
    for change, alter in (("brightness ×1.3 (ideal 0.5)", brightness_step), ("3× speed (higher is better)", sudden_motion)):
        for label, how in (("as scored today", alter), ("gain-corrected", then(alter, gain_corrected))):
            print(f"\n{change}, {label}:")
            for name, m in measure(exp, train, how).items():
                print(f"  {name:20s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")
    test = exp.videos("test")
    for label, videos in (("as scored today", test),
                          ("gain-corrected", {v: gain_corrected(f) for v, f in test.items()})):
        means = {v: exp.score(f) for v, f in videos.items()}
        index = {v: m.frame_index for v, m in means.items()}
        print(f"\nPed2 test, {label}:")
        exp.report("  regularity (1 - s_r)", {v: 1 - scoring.regularity(m.recon_error) for v, m in means.items()}, index)
        exp.report("  motion_regularity (1 - s)", {v: 1 - scoring.regularity(m.motion_error) for v, m in means.items()},
                   index)


if __name__ == "__main__":
    main()
