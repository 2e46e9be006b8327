"""Connecting the driver to Ray, and shipping this source tree to Ray workers: one place for train and evaluate."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import ray

import pipeline
import trajgru
from pipeline.errors import NowcastError

_ADVICE = ("Check --ray-address / RAY_ADDRESS (e.g. head:6379 on a cluster node, or ray://head:10001), "
           "or unset both to start a local Ray")


def check_ray_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (NowcastError) when ``address`` (``host:port`` or ``ray://host:port``) accepts no TCP
    connection within ``timeout_s``: ``ray.init`` itself waits minutes for an absent cluster.
    ``auto`` and addresses without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise NowcastError(f"no Ray cluster answers at {address} ({exc}). {_ADVICE}") from exc


def connect_ray(address: str | None, **init_kwargs) -> bool:
    """Connect to the Ray cluster at ``address`` (else env ``RAY_ADDRESS``), or start a local one.

    No-op when Ray is already initialised. The job runs this source tree's code on every worker
    (:func:`code_runtime_env`). ``init_kwargs`` go to ``ray.init``. Returns True if this call
    initialised Ray (the caller may then shut it down). An unreachable cluster raises NowcastError.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_ray_reachable(address)
    try:
        ray.init(address=address, log_to_driver=True, runtime_env=code_runtime_env(), **init_kwargs)
    except Exception as exc:  # noqa: BLE001 (ConnectionError, RuntimeError, ... depending on the failure)
        raise NowcastError(
            f"cannot connect to Ray at {address or 'a new local cluster'}: {exc}. {_ADVICE}"
        ) from exc
    return True


def code_runtime_env() -> dict:
    """The job-level Ray ``runtime_env`` of :func:`connect_ray`: it ships the driver's ``pipeline`` and
    ``trajgru`` packages to the workers (``py_modules``), so Ray tasks and Ray Train workers run the
    driver's code on any cluster, whatever is installed on its nodes."""
    return {"py_modules": [str(Path(package.__file__).resolve().parent) for package in (pipeline, trajgru)]}
