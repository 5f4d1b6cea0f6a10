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
def s3_iam_server():
    """Moto's standalone server as a process of its own, enforcing IAM (the in-process server
    above lets every key do everything): storage options of a key that may do anything in S3
    (`admin`) and of one that may read and write but not delete (`no_delete`, an append-only
    policy), and a bucket `vadray-iam`."""
    import subprocess
    import sys
    import time

    import boto3

    port = free_port()
    # The first 6 requests (two users, their policies and keys) are let through unauthenticated.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="6"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")

        def key_of(user: str, actions: list[str]) -> dict:
            import json

            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            return {"endpoint_url": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

        keys = {"admin": key_of("admin", ["s3:*"]),
                "no_delete": key_of("appender", ["s3:Get*", "s3:List*", "s3:Put*"])}
        import s3fs

        s3fs.S3FileSystem(**keys["admin"]).mkdir("vadray-iam")
        yield keys
    finally:
        server.terminate()
        server.wait(30)


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
