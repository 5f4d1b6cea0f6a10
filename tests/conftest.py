"""Shared fixtures: one real local Ray per session, a real S3 server (moto), tiny real videos."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

PED2 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ucsd-ped2"
TEST_SIZE = 27  # the smallest frame size the models accept (11 + 8k, k = 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """ray.init(num_cpus=2) once for the whole session (Train workers use fractional CPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint: moto's standalone server on 127.0.0.1 and a free port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    yield options
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns (bucket name, storage options for s3fs)."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    name = f"vadray-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    yield name, s3_server


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory):
    """Two tiny normal clips (64×48, 30 frames, H.264) made with PyAV: training footage."""
    from vadray.synth import make_archive

    folder = tmp_path_factory.mktemp("archive")
    make_archive(str(folder), num_videos=2, width=64, height=48, num_frames=30, seed=1)
    return folder


@pytest.fixture(scope="session")
def synth_test_archive(tmp_path_factory):
    """Three tiny clips with one anomaly kind each, plus frame_labels.csv."""
    from vadray.synth import make_archive

    folder = tmp_path_factory.mktemp("test_archive")
    make_archive(str(folder), num_videos=3, width=64, height=48, num_frames=30, seed=2,
                 anomalies=("fast", "against", "size"), prefix="test")
    return folder


ped2 = pytest.mark.skipif(not PED2.exists(), reason="../shared/datasets/ucsd-ped2 is absent")


@pytest.fixture(scope="session")
def ingested_archive(ray_session, synth_archive, tmp_path_factory):
    """The training archive ingested at TEST_SIZE by the real ingest job."""
    from vadray.ingest import run_ingest

    out = tmp_path_factory.mktemp("ingested")
    summary = run_ingest(str(synth_archive), str(out), size=TEST_SIZE, segment_seconds=1.3)
    assert summary.failures == 0 and summary.frames == 60
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(ray_session, ingested_archive, tmp_path_factory):
    """A ConvLSTM-AE trained for one epoch by the real training job (Ray Train, 1 CPU worker)."""
    from vadray.train import run_training

    ckpt = tmp_path_factory.mktemp("checkpoint")
    card = run_training(str(ingested_archive), str(ckpt), epochs=1, batch_size=8, workers=1,
                        cpus_per_worker=0.5, val_fraction=0.5, hop=2)
    assert card["epochs_run"] == 1
    return ckpt
