"""Thin Ray plumbing: join a cluster when there is one, else start a local Ray."""
from __future__ import annotations

import os

import ray


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect once. RAY_ADDRESS (set inside `ray job submit`) joins that cluster."""
    # Ray Data 2.60 starts 32 Parquet footer-reader actors for every read_parquet; on a small
    # cluster starting them costs more than reading the shards (measured: the stats pass of
    # ingest took 22-41 s for Ped2 with 32, 7 s with 1). Scale the pool with the machine.
    if "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS" not in os.environ:
        os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = str(max(1, min(32, (os.cpu_count() or 2) // 4)))
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # With the dashboard (the default when ray[default] is installed, as here), a local run
        # can be watched at http://127.0.0.1:8265, and Ray Train's placement-group cleaner can
        # reach the state API: without it, that actor logs "Failed to query Ray Train
        # Controller actor state" every second of a training run (Ray 2.60, measured).
        ray.init(num_cpus=num_cpus, log_to_driver=True)
