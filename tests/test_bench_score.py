"""Smoke runs of `vadray bench score` (and the argument checks of `vadray bench ped2`).

No timing assertions: the benchmark's figures are ratios for people to read; here only the
lines it prints and what it leaves behind are checked.
"""
from __future__ import annotations

import re

import pytest

from vadray.cli import main


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_bench_score_help_shows_its_options(capsys):
    assert _exit_code(["bench", "score", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--workdir", "--size", "--frames", "--videos", "--hop", "--batch-size", "--checkpoint",
                   "--repeat", "--memory-segment-seconds", "--only"):
        assert option in out


def test_bench_score_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert main(["bench", "score", "--workdir", str(tmp_path), "--size", "30"]) == 2
    assert "frame size 30" in capsys.readouterr().err
    assert main(["bench", "score", "--workdir", str(tmp_path), "--frames", "5"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_bench_score_prints_throughput_and_memory_ratios(ray_session, trained_checkpoint, tmp_path, capsys):
    work = tmp_path / "work"
    code = main(["bench", "score", "--workdir", str(work), "--checkpoint", str(trained_checkpoint),
                 "--frames", "22", "--videos", "1", "--width", "64", "--height", "48", "--repeat", "1",
                 "--memory-segment-seconds", "1", "--sample-interval", "0.1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^frames\s+22 in 1 video, 4 volumes$", out, re.M), out  # 0, 5, 10 + the last one, 12
    assert re.search(r"^baseline fps\s+\d+\.\d\s+\(bare model", out, re.M), out
    assert re.search(r"^score fps\s+\d+\.\d\s", out, re.M), out
    assert re.search(r"^actor threads\s+\d", out, re.M), out  # measured inside the ScoreVolumes actor
    assert re.search(r"^job time\s+start \d+\.\d s .* batches \d+\.\d s, finish \d+\.\d s", out, re.M), out
    assert re.search(r"^ratio\s+\d+\.\d\d\s+\(median of 1; score / ", out, re.M), out
    assert re.search(r"^memory short\s+workers Σ \d+ MB, largest worker \d+ MB\s+\(22 frames\)", out, re.M), out
    assert re.search(r"^memory long\s+workers Σ \d+ MB, largest worker \d+ MB\s+\(220 frames\)", out, re.M), out
    assert re.search(r"^memory ratio\s+\d+\.\d\d\s+\(peak Σ RSS of Ray workers", out, re.M), out
    # every score run wrote its full frames table and then was cleaned up
    assert "warning" not in out
    assert not (work / "score-output").exists()
    assert not (work / "memory-output-long").exists()


def test_bench_ped2_refuses_a_wrong_archive_and_a_bad_size(tmp_path, capsys):
    assert main(["bench", "ped2", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    assert "not a Ped2 archive" in capsys.readouterr().err
    assert main(["bench", "ped2", "--data", str(tmp_path), "--size", "100"]) == 2
    assert "frame size 100" in capsys.readouterr().err
