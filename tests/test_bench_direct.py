"""`vadray bench ped2-direct`: the single-process trainer for machines without Ray.

Its checkpoint must be one the real jobs accept, and its diagnostic scores must be the real
scoring job's: the AUCs it prints for its chosen epoch equal `run_score` + `evaluate_output`
on the same checkpoint and videos.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from vadray.cli import main

TEST_SIZE = 27  # the smallest frame size the models accept


@pytest.fixture(scope="module")
def direct_run(synth_archive, synth_test_archive, tmp_path_factory):
    """Two epochs at 27 px in a subprocess where `import ray` fails: the path needs no Ray."""
    work = tmp_path_factory.mktemp("direct")
    argv = ["bench", "ped2-direct", str(synth_archive), str(work), "--test", str(synth_test_archive),
            "--labels", str(synth_test_archive / "frame_labels.csv"), "--size", str(TEST_SIZE),
            "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.5", "--device", "cpu"]
    code = f"import sys; sys.modules['ray'] = None\nfrom vadray.cli import main\nsys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, proc.stdout


def test_direct_run_writes_a_checkpoint_the_jobs_load(direct_run):
    from vadray import load_model

    work, out = direct_run
    model, card = load_model(str(work / "checkpoint"))
    assert card["model"]["name"] == "convlstm_ae" and card["input"]["size"] == TEST_SIZE
    losses = [h["val_loss"] for h in card["history"]]
    assert card["epochs_run"] == 2 and card["best_epoch"] == 1 + losses.index(min(losses))
    assert card["training"]["trainer"].startswith("single process, no Ray")
    assert card["validation"]["frame_error"]["n"] == 30  # the held-out video, every frame
    assert card["versions"]["ray"] is None
    results = json.loads((work / "direct-results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert len(results["diagnostics_not_used_for_selection"]) == 2
    assert "test AUC (diagnostic, not used)" in out


def test_direct_scores_equal_the_scoring_job(direct_run, synth_test_archive, ray_session, tmp_path):
    from vadray.evaluate import evaluate_output
    from vadray.score import run_score

    work, _ = direct_run
    direct = json.loads((work / "direct-results.json").read_text())["best_epoch_test_metrics"]
    summary = run_score(str(synth_test_archive), str(tmp_path / "scores"), str(work / "checkpoint"))
    assert summary.failures == 0
    job = evaluate_output(str(tmp_path / "scores"), str(synth_test_archive / "frame_labels.csv"))
    for column in ("regularity", "anomaly_score", "cell_error_max"):
        assert job[column]["frames"] == direct[column]["frames"] == 90
        assert math.isclose(job[column]["auc"], direct[column]["auc"], abs_tol=1e-9), column


def test_direct_bad_arguments_are_usage_errors(synth_archive, tmp_path, capsys):
    assert main(["bench", "ped2-direct", str(synth_archive), str(tmp_path), "--size", "30"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["bench", "ped2-direct", str(synth_archive), str(tmp_path), "--test", "x"]) == 2
    assert "--test and --labels go together" in capsys.readouterr().err
