"""Faults injected into `nowcast train`'s workers from outside the production code.

:func:`crash_once_at_step_5` replaces ``pipeline.train.driver.train_loop_per_worker`` (monkeypatched in the
driver; Ray pickles this module's function by reference, so the workers import it from here): in each
worker it wraps :class:`trajgru.step.TrainStep` so that the last rank kills its own process, once per
run, just before training step 5 (a marker file in the run's folder remembers that it happened).
"""

from __future__ import annotations

import os
from pathlib import Path

import ray.train

from pipeline.train import worker
from trajgru.step import TrainStep

CRASH_STEP = 5


def crash_once_at_step_5(config: dict):
    """The worker loop, with the last rank exiting abruptly (exit code 17) before step 5 the first time."""
    ctx = ray.train.get_context()
    cfg = config["cfg"]
    marker = Path(cfg["storage_path"]) / cfg["run_name"] / f".failed_at_{CRASH_STEP}"
    last_rank = ctx.get_world_rank() == ctx.get_world_size() - 1
    real_call = TrainStep.__call__

    def call(self, *batch, step: int = 0):
        if last_rank and step == CRASH_STEP and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            os._exit(17)
        return real_call(self, *batch, step=step)

    TrainStep.__call__ = call
    try:
        return worker.train_loop_per_worker(config)
    finally:
        TrainStep.__call__ = real_call
