"""`vadray bench` dispatch and a smoke run of the ingest benchmark (no timing assertions)."""
from __future__ import annotations

import re

import pytest

from vadray import bench
from vadray.cli import main


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_bench_help_lists_the_four_benchmarks(capsys):
    assert _exit_code(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "train", "score", "ped2"):
        assert re.search(rf"^\s+{name}\s+\S", out, re.M), f"{name} missing from:\n{out}"


def test_bench_ingest_help_shows_its_options(capsys):
    assert _exit_code(["bench", "ingest", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: vadray bench ingest" in out
    for option in ("--source", "--workdir", "--size", "--processes", "--segment-seconds", "--repeat"):
        assert option in out


def test_bench_without_name_or_with_unknown_name_is_a_usage_error(capsys):
    assert _exit_code(["bench"]) == 2
    assert _exit_code(["bench", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_missing_benchmark_module_is_a_clear_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(bench.BENCHMARKS, "absent", ("vadray.bench.absent_for_test", "not written yet"))
    assert _exit_code(["bench", "absent", "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert "benchmark 'absent' is not available" in err and "vadray.bench.absent_for_test" in err


def test_bench_ingest_bad_arguments(capsys):
    assert main(["bench", "ingest", "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err


def test_ingest_bench_runs_on_a_tiny_archive(ray_session, tmp_path, capsys):
    from vadray.synth import make_archive

    archive = tmp_path / "archive"
    make_archive(str(archive), num_videos=2, width=64, height=48, num_frames=30, seed=3)
    code = main(["bench", "ingest", "--source", str(archive), "--workdir", str(tmp_path / "work"),
                 "--size", "27", "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^videos\s+2$", out, re.M), out
    assert re.search(r"^frames\s+60 \(baseline decoded 60\)", out, re.M), out
    assert re.search(r"^baseline fps\s+\d", out, re.M) and re.search(r"^ingest fps\s+\d", out, re.M), out
    assert re.search(r"^ratio\s+\d+\.\d\d\s", out, re.M), out
    assert re.search(r"^ingest time\s+list .*probe\+decode\+write .*stats", out, re.M), out
    assert not (tmp_path / "work" / "ingest-output").exists()  # the bench cleans up its output


def test_train_bench_gives_the_job_the_baselines_threads(ray_session, tmp_path, capsys):
    """The job left to `vadray train` ran the node's CPUs (--threads + --data-cpus) as torch
    threads against the baseline's --threads: a ratio flattered ~1.8× (benchmark review)."""
    import json

    code = main(["bench", "train", "--workdir", str(tmp_path), "--videos", "2", "--frames", "40", "--size", "27",
                 "--epochs", "2", "--batch-size", "8", "--hop", "4", "--threads", "1", "--data-cpus", "1",
                 "--skip-two-workers", "--model-params", '{"encoder_channels": [8, 4], "lstm_channels": [4, 4, 4]}'])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads((tmp_path / "bench_train.json").read_text())
    (job,) = result["jobs"]
    assert job["torch_threads_per_worker"] == 1 == result["settings"]["threads"]
    assert job["ratio_to_baseline"] > 0 and "1 torch thread(s)" in out
