"""The source interface's shared parts: the default frame_shape and read_frames, and dbz_to_u8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import NowcastError
from pipeline.sources import Frame, FrameRef, Listing, Source, dbz_to_u8
from pipeline.sources.base import sample_frames


class MemorySource(Source):
    """A source whose 'files' are arrays in a dict: what a new format has to write, and no more."""

    name, title, hint = "memory", "memory", "a memory archive"

    def __init__(self, frames: dict):
        self.frames = frames

    def detect(self, root: Path) -> bool:
        return True

    def list_frames(self, root: Path) -> Listing:
        return Listing([FrameRef(t, f"f{t}") for t in sorted(self.frames)])

    def read_frame(self, root, ref, shape=None) -> Frame:
        pixels = self.frames[ref.time_s]
        if pixels is None:
            return Frame.bad("unreadable")
        if shape is not None and pixels.shape != tuple(shape):
            return Frame.bad("wrong size")
        return Frame(pixels, np.ones(pixels.shape, bool))


def test_default_frame_shape_and_read_frames():
    frames = {t: np.zeros((4, 6), np.uint8) for t in range(10)}
    frames[3] = np.zeros((5, 5), np.uint8)
    frames[4] = None
    source = MemorySource(frames)
    listing = source.list_frames(Path("."))
    assert source.frame_shape(Path("."), listing) == (4, 6)
    got = list(source.read_frames(Path("."), listing.frames, (4, 6)))
    assert [f.ok for f in got] == [t not in (3, 4) for t in range(10)]
    with pytest.raises(NowcastError, match="nothing to ingest"):
        MemorySource({0: None}).frame_shape(Path("."), Listing([FrameRef(0, "f0")]))


def test_sample_frames_spreads_over_the_listing():
    refs = [FrameRef(t, str(t)) for t in range(1000)]
    picked = sample_frames(refs, 64)
    assert len(picked) == 64 and picked[0] is refs[0] and picked[-1] is refs[-1]
    assert sample_frames(refs[:3], 64) == refs[:3] and sample_frames([]) == []


def test_dbz_to_u8_is_the_stored_encoding():
    dbz = np.array([-30.0, -10.0, 0.0, 25.0, 60.0, 80.0])
    np.testing.assert_array_equal(
        dbz_to_u8(dbz), np.clip(np.rint(255 * (dbz + 10) / 70), 0, 255).astype(np.uint8)
    )
    assert dbz_to_u8(dbz).dtype == np.uint8
