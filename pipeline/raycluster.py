"""The driver and Ray: connecting, shipping this source tree to Ray workers, and the driver link.

Ray's own output stays out of the user's terminal: :func:`connect_ray` keeps Ray's driver logging to
errors and does not forward the workers' output (``log_to_driver=False``); it all stays in Ray's log
folder, whose path is printed once. What the pipeline's workers have to say reaches the driver through
a :class:`DriverLink` instead, which is also how a worker notices that its driver died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import pipeline
import trajgru
from pipeline.errors import NowcastError

_ADVICE = (
    "Check --ray-address / RAY_ADDRESS (e.g. head:6379 on a cluster node, or ray://head:10001), "
    "or unset both to start a local Ray"
)
#: Seconds a worker waits for the driver link to answer before it decides the driver is gone.
LINK_TIMEOUT_S = 60.0


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
    (:func:`code_runtime_env`). Ray's own messages are kept out of the terminal (module doc); the
    folder that holds them is printed. ``init_kwargs`` go to ``ray.init``. Returns True if this call
    initialised Ray (the caller may then shut it down). An unreachable cluster raises NowcastError.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_ray_reachable(address)
    init_kwargs = {"log_to_driver": False, "logging_level": logging.ERROR, **init_kwargs}
    try:
        ray.init(address=address, runtime_env=code_runtime_env(), **init_kwargs)
    except Exception as exc:  # noqa: BLE001 (ConnectionError, RuntimeError, ... depending on the failure)
        raise NowcastError(
            f"cannot connect to Ray at {address or 'a new local cluster'}: {exc}. {_ADVICE}"
        ) from exc
    print(
        f"[ray] {'connected to ' + address if address else 'started a local Ray'}; Ray's own logs: "
        f"{ray_logs_dir()}",
        flush=True,
    )
    return True


def ray_logs_dir() -> str:
    """The folder of this Ray session's logs on this node (where Ray's own messages go)."""
    try:
        return ray._private.worker._global_node.get_logs_dir_path()  # no public API names it
    except AttributeError:
        return "/tmp/ray/session_latest/logs"


def code_runtime_env() -> dict:
    """The job-level Ray ``runtime_env`` of :func:`connect_ray`: it ships the driver's ``pipeline`` and
    ``trajgru`` packages to the workers (``py_modules``), so Ray tasks and Ray Train workers run the
    driver's code on any cluster, whatever is installed on its nodes."""
    return {"py_modules": [str(Path(package.__file__).resolve().parent) for package in (pipeline, trajgru)]}


# --------------------------------------------------------------------------- the driver link
class DriverGone(RuntimeError):
    """The driver that started this job is gone (killed, or its node lost): a worker must stop."""


class _Inbox:
    """The Ray actor behind :class:`DriverLink`: lines from the workers, waiting for the driver."""

    def __init__(self):
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def ping(self) -> bool:
        return True


class DriverLink:
    """A small actor owned by the driver, so it dies with the driver (Ray's ownership).

    Workers hold the link (it pickles as the actor handle): :meth:`say` sends a line the driver
    prints, :meth:`check` raises :class:`DriverGone` once the driver is gone. The driver creates it
    with :meth:`create` (on its own node) and prints what arrives while :meth:`printing`.
    """

    def __init__(self, actor):
        self.actor = actor

    @classmethod
    def create(cls) -> DriverLink:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return cls(ray.remote(num_cpus=0, max_restarts=0)(_Inbox).options(scheduling_strategy=here).remote())

    def _call(self, ref):
        try:
            return ray.get(ref, timeout=LINK_TIMEOUT_S)
        except (RayActorError, GetTimeoutError) as exc:
            raise DriverGone("the driver of this run is gone; stopping") from exc

    def say(self, line: str) -> None:
        """Send ``line`` to the driver's terminal (DriverGone when the driver is gone)."""
        self._call(self.actor.say.remote(line))

    def check(self) -> None:
        """DriverGone when the driver is gone."""
        self._call(self.actor.ping.remote())

    @contextlib.contextmanager
    def printing(self, out=None, every_s: float = 0.5) -> Iterator[None]:
        """Print the workers' lines on the driver (to ``out``, default stdout) while the block runs."""
        out = out or sys.stdout
        stop = threading.Event()

        def pump() -> None:
            while True:
                stopping = stop.wait(every_s)
                with contextlib.suppress(Exception):  # a dead actor at shutdown: nothing left to print
                    for line in ray.get(self.actor.take.remote(), timeout=LINK_TIMEOUT_S):
                        print(line, file=out, flush=True)
                if stopping:
                    return

        thread = threading.Thread(target=pump, name="nowcast-driver-link", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=LINK_TIMEOUT_S)
