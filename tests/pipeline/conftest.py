"""Fixtures that build tiny HKO-7 archives by hand with the pipeline.sources.hko7 codecs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline.catalog import INTERVAL_S, write_day_list
from pipeline.sources import hko7

T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))


@dataclass
class HandArchive:
    """What a hand-built archive holds: expected frames/masks by time (epoch s)."""

    root: Path
    frames: dict = field(default_factory=dict)  # time_s -> u8 (H, W)
    masks: dict = field(default_factory=dict)  # time_s -> bool (H, W) (all True if no mask file)
    size: int = 64

    def times_s(self) -> np.ndarray:
        return np.asarray(sorted(self.frames), dtype=np.int64)


def frame_pixels(time_s: int, size: int) -> np.ndarray:
    """A deterministic (size, size) uint8 frame that differs for every time (a moving blob + noise)."""
    rng = np.random.default_rng(time_s % (2**32))
    y, x = np.mgrid[0:size, 0:size]
    k = (time_s // INTERVAL_S) % 97
    blob = 200.0 * np.exp(-(((x - (k * 3) % size) ** 2 + (y - size / 2) ** 2) / (2 * (size / 6) ** 2)))
    return np.clip(blob + rng.integers(0, 30, (size, size)), 0, 255).astype(np.uint8)


def mask_pixels(time_s: int, size: int) -> np.ndarray:
    """A (size, size) bool mask: a disc plus a few random invalid pixels."""
    rng = np.random.default_rng(time_s % (2**32) + 1)
    y, x = np.mgrid[0:size, 0:size]
    disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2
    return disc & (rng.random((size, size)) > 0.02)


def add_frame(arch: HandArchive, time_s: int, with_mask: bool = True) -> None:
    """Write one good frame (and mask) into the archive and record the expectation."""
    f = frame_pixels(time_s, arch.size)
    p = hko7.frame_path(arch.root, time_s)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(hko7.encode_frame(f))
    arch.frames[time_s] = f
    if with_mask:
        m = mask_pixels(time_s, arch.size)
        mp = hko7.mask_path(arch.root, time_s)
        mp.parent.mkdir(parents=True, exist_ok=True)
        mp.write_bytes(hko7.encode_mask(m))
        arch.masks[time_s] = m
    else:
        arch.masks[time_s] = np.ones((arch.size, arch.size), dtype=bool)


def build_archive(
    root: Path, n_frames: int, size: int = 64, start_s: int = T0_S, missing=(), day_lists: dict | None = None
) -> HandArchive:
    """Archive of ``n_frames`` slots at the HKO-7 cadence from ``start_s``, skipping slot indices in
    ``missing``; ``day_lists`` {split: [days]} writes <split>_days.txt."""
    arch = HandArchive(Path(root), size=size)
    for k in range(n_frames):
        if k not in set(missing):
            add_frame(arch, start_s + k * INTERVAL_S)
    for split, days in (day_lists or {}).items():
        write_day_list(Path(root) / f"{split}_days.txt", [(np.datetime64(d, "D"), 1.0) for d in days])
    return arch


@pytest.fixture
def hand_archive(tmp_path):
    """Factory: hand_archive(n_frames, **kw) -> HandArchive under tmp_path/archive."""

    def make(n_frames: int = 40, **kw) -> HandArchive:
        return build_archive(tmp_path / "archive", n_frames, **kw)

    return make


@pytest.fixture(scope="session")
def archive_tools():
    """The helpers above as a namespace (test modules are not a package, so they cannot import them)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        T0_S=T0_S,
        add_frame=add_frame,
        build_archive=build_archive,
        frame_pixels=frame_pixels,
        mask_pixels=mask_pixels,
    )
