"""Jobs on a real Ray cluster: `ray start --head` on this machine, jobs submitted through the Jobs
API exactly as `ray job submit --working-dir . -- python jobs/X.py …` submits them, outputs read back.

The head is one of our own: its own temp dir (so it never becomes the "current cluster" that
someone else's `ray.init()` would join), free ports, a token of its own, every address on
127.0.0.1. It is stopped by SIGTERM to its `ray start --block` process, which tears down this
node's processes only. `ray stop` is not used: in Ray 2.60 it takes no address and kills every
Ray process on the machine by name, other people's sessions included.
"""
from __future__ import annotations

import math

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pytest

REPO = Path(__file__).resolve().parents[1]
# The interpreter running the tests; its bin/ goes first on the cluster's PATH, so a job's
# `python` is this environment's, as a cluster image's `python` is the image's.
VENV_BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", "demo-output", "bench-output", ".pytest_cache", "*.egg-info"]
TEST_SIZE = 27
JOB_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


@dataclass
class JobResult:
    job_id: str
    status: str
    exit_code: int | None
    message: str
    logs: str
    seconds: float


@dataclass
class Head:
    process: subprocess.Popen
    temp_dir: str
    gcs_address: str
    dashboard_url: str
    client: object  # ray.job_submission.JobSubmissionClient

    def submit(self, script: str, *args: str, timeout: float = JOB_TIMEOUT_S) -> JobResult:
        """Submit `python jobs/<script>.py ARGS` with the repo as working dir; wait for the end."""
        entrypoint = shlex.join(["python", f"jobs/{script}.py", *args])
        job_id = self.client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES,
                         "env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                      "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
        deadline = time.monotonic() + timeout
        while not (status := self.client.get_job_status(job_id)).is_terminal():
            if time.monotonic() > deadline:
                self.client.stop_job(job_id)
                pytest.fail(f"{entrypoint} still {status} after {timeout:.0f} s:\n"
                            f"{self.client.get_job_logs(job_id)[-4000:]}")
            time.sleep(0.5)
        info = self.client.get_job_info(job_id)
        seconds = ((info.end_time or 0) - (info.start_time or 0)) / 1000
        print(f"jobs/{script}.py: {status} in {seconds:.1f} s")
        return JobResult(job_id, status, info.driver_exit_code, info.message or "",
                         self.client.get_job_logs(job_id), seconds)


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (this head's temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so a killed test run
    leaves no head behind (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _cluster_env(token: str) -> dict[str, str]:
    # Nothing of the caller's Ray settings (RAY_ADDRESS, auth mode, …) leaks into this head.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's switch for loopback-only clusters: node addresses are 127.0.0.1, not the
        # machine's interface address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Token authentication with a token made for this head, passed by environment only.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # SIGTERM stops the node at once instead of draining for 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    })
    return env


def start_head(num_cpus: int = 2, timeout: float = 90) -> Head:
    from ray.job_submission import JobSubmissionClient

    gcs, dash, agent_http, agent_grpc, runtime_env, metrics, client = _free_ports(7)
    token = secrets.token_hex(32)
    # Short on purpose: Ray's Unix sockets live under it and a socket path has ≤ 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="vadray-ray-", dir="/tmp")
    log_path = Path(temp_dir) / "ray-start.log"
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
           "--temp-dir", temp_dir, "--num-cpus", str(num_cpus),
           "--object-store-memory", str(512 * 1024 * 1024),
           "--port", str(gcs), "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
           "--ray-client-server-port", str(client)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, env=_cluster_env(token), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
            pytest.fail(f"ray start exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            api = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                head = Head(process, temp_dir, f"127.0.0.1:{gcs}", url, None)
                stop_head(head)
                pytest.fail(f"no Jobs API at {url} after {timeout:.0f} s")
            time.sleep(0.5)
    return Head(process, temp_dir, f"127.0.0.1:{gcs}", url, api)


def stop_head(head: Head) -> list[int]:
    """Stop this head only; returns the pids that had to be killed after the graceful stop."""
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)  # the node kills raylet, GCS, dashboard, workers
        try:
            head.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait(timeout=10)
    stragglers = _pids_mentioning(head.temp_dir)
    for pid in stragglers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    return stragglers


@pytest.fixture(scope="module")
def ray_head():
    head = start_head()
    yield head
    stragglers = stop_head(head)
    assert not stragglers, f"processes of the test head outlived its shutdown: {stragglers}"


def test_bad_arguments_fail_the_job_with_exit_status_2(ray_head, tmp_path):
    result = ray_head.submit("ingest", str(tmp_path / "no-such-archive"), str(tmp_path / "out"))
    assert result.status == "FAILED"
    assert result.exit_code == 2, result.logs
    assert "vadray ingest: error:" in result.logs
    assert not (tmp_path / "out" / "clips").exists()


@pytest.fixture(scope="module")
def ingested(ray_head, synth_archive, tmp_path_factory):
    """The ingest job over two tiny normal clips; its result and OUTPUT."""
    out = tmp_path_factory.mktemp("cluster") / "ingested"
    result = ray_head.submit("ingest", str(synth_archive), str(out), "--size", str(TEST_SIZE),
                             "--camera", "cam1")
    return result, out


def test_ingest_job_joins_the_cluster_and_writes_clips(ray_head, ingested):
    result, out = ingested
    assert result.status == "SUCCEEDED", result.logs[-4000:]
    assert result.exit_code == 0
    # The driver joined this head (RAY_ADDRESS set by the job supervisor), not a Ray of its own.
    assert f"Connecting to existing Ray cluster at address: {ray_head.gcs_address}" in result.logs
    assert "Started a local Ray instance" not in result.logs

    clips = pads.dataset(out / "clips", format="parquet", partitioning="hive").to_table()
    assert sorted(set(clips["video_id"].to_pylist())) == ["video001", "video002"]
    assert sum(clips["num_frames"].to_pylist()) == 2 * 30
    assert set(clips["size"].to_pylist()) == {TEST_SIZE}
    assert set(clips["camera"].to_pylist()) == {"cam1"}
    assert all(len(f) == n * TEST_SIZE * TEST_SIZE
               for f, n in zip(clips["frames"].to_pylist(), clips["num_frames"].to_pylist()))
    assert (out / "stats" / "stats.json").is_file()


def test_train_then_score_jobs_write_one_row_per_frame(ray_head, ingested, synth_test_archive, tmp_path):
    """train.py on the ingested shards, then score.py with that checkpoint over a test archive,
    then the same score.py again: a rerun skips the finished videos and adds no rows."""
    ingest_result, shards = ingested
    assert ingest_result.status == "SUCCEEDED", "the ingest job failed: see the test above"
    checkpoint = tmp_path / "model"
    train = ray_head.submit(
        "train", str(shards), str(checkpoint), "--epochs", "1", "--batch-size", "4",
        "--cpus-per-worker", "0.5", "--val-fraction", "0.5",
        "--model-params", json.dumps({"encoder_channels": [8, 4], "lstm_channels": [4, 4, 4]}))
    assert train.status == "SUCCEEDED", train.logs[-4000:]
    assert f"Connecting to existing Ray cluster at address: {ray_head.gcs_address}" in train.logs
    card = json.loads((checkpoint / "final" / "card.json").read_text())
    assert (checkpoint / "final" / "model.pt").is_file()
    assert card["input"]["size"] == TEST_SIZE and card["epochs_run"] == 1

    out = tmp_path / "scores"
    args = (str(synth_test_archive), str(out), "--checkpoint", str(checkpoint), "--camera", "cam1",
            "--actors", "1", "--batch-size", "8")
    score = ray_head.submit("score", *args)
    assert score.status == "SUCCEEDED", score.logs[-4000:]
    assert f"Connecting to existing Ray cluster at address: {ray_head.gcs_address}" in score.logs

    def frames_table():
        return pads.dataset(out / "frames", format="parquet", partitioning="hive").to_table()

    frames = frames_table()
    per_video = {}
    for video, index in zip(frames["video_id"].to_pylist(), frames["frame_index"].to_pylist()):
        per_video.setdefault(video, []).append(index)
    assert {v: sorted(i) for v, i in per_video.items()} == {v: list(range(30)) for v in
                                                             ("test001", "test002", "test003")}
    assert set(frames["model_id"].to_pylist()) == {card["model_id"]}
    assert set(frames["camera"].to_pylist()) == {"cam1"}
    assert all(math.isfinite(e) and e > 0 for e in frames["recon_error"].to_pylist())   # a real error each
    assert len(list((out / "manifest").rglob("*.done"))) == 3

    rerun = ray_head.submit("score", *args)
    assert rerun.status == "SUCCEEDED", rerun.logs[-4000:]
    assert "3 already done" in rerun.logs
    assert frames_table().num_rows == 3 * 30
