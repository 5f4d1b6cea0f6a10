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
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
