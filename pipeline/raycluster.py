"""Connecting the driver to Ray: one place for train and evaluate."""
from __future__ import annotations

import os

from pipeline.errors import NowcastError


def connect_ray(address: str | None, **init_kwargs) -> bool:
    """Connect to the Ray cluster at ``address`` (else env ``RAY_ADDRESS``), or start a local one.

    No-op when Ray is already initialised. ``init_kwargs`` go to ``ray.init``. Returns True if this
    call initialised Ray (the caller may then shut it down). An unreachable cluster raises NowcastError.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, log_to_driver=True, **init_kwargs)
    except Exception as exc:  # noqa: BLE001 (ConnectionError, RuntimeError, ... depending on the failure)
        raise NowcastError(
            f"cannot connect to Ray at {address or 'a new local cluster'}: {exc}. Check --ray-address / "
            "RAY_ADDRESS (e.g. head:6379 on a cluster node, or ray://head:10001), or unset both to start "
            "a local Ray"
        ) from exc
    return True
