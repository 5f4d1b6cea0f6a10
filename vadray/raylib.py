"""Thin Ray plumbing: join a cluster when there is one, else start a local Ray."""
from __future__ import annotations

import os

import ray


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect once. RAY_ADDRESS (set inside `ray job submit`) joins that cluster."""
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
