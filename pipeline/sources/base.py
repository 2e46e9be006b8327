"""The small interface every radar-archive format implements.

A *source* knows one archive format: it lists the frames an archive holds (with their times) and
reads one frame as stored pixels + a validity mask, or says why the frame cannot be used. The
ingest stage knows only this interface, so a new format is one new module in ``pipeline.sources``
(a :class:`Source` subclass) plus one line in the registry (``pipeline.sources.SOURCES``).

Conventions shared by every format
----------------------------------
- Times are ``int`` seconds since the Unix epoch, UTC (the frame's nominal time).
- Paths in :class:`FrameRef` and in bad-file entries are POSIX paths relative to the archive root.
- Pixels are ``uint8`` with ``pixel = round(255 * (dBZ + 10) / 70)`` (:data:`PIXEL_ENCODING`,
  :func:`dbz_to_u8`): a reader converts its format's values to this encoding.
- Masks are ``bool`` with True = a valid measurement (inside the radar's range, not clutter).
- A bad frame (unreadable, wrong size, wrong type) is not an exception: :meth:`Source.read_frame`
  returns a :class:`Frame` with ``reason`` set, and ingest stores the slot as missing.
- Sources hold no open files or caches between calls: they are pickled to Dask workers.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.errors import NowcastError

#: How every source format's values are stored (the store records this string).
PIXEL_ENCODING = "uint8 pixel = round(255 * (dBZ + 10) / 70), i.e. dBZ = 70 * pixel / 255 - 10"

#: Frames sampled by the default :meth:`Source.frame_shape`.
_SHAPE_SAMPLE = 64


def dbz_to_u8(dbz: np.ndarray) -> np.ndarray:
    """Reflectivity (dBZ, any shape) -> stored uint8 pixel ``round(255 * (dBZ + 10) / 70)``, clipped
    to 0..255 (so -10 dBZ and below -> 0, 60 dBZ and above -> 255)."""
    return np.clip(np.rint(255.0 * (np.asarray(dbz, dtype=np.float64) + 10.0) / 70.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True, order=True)
class FrameRef:
    """Where one frame of an archive is.

    Attributes
    ----------
    time_s : int
        Nominal time of the frame, seconds since the Unix epoch (UTC).
    path : str
        POSIX path of the file holding the frame, relative to the archive root.
    index : int
        Position of the frame inside a file that holds several times (0 for one-frame files).
    mask_path : str or None
        A separate file holding the frame's validity mask, relative to the archive root, for formats
        that keep masks apart (HKO-7). None when the mask comes from ``path`` itself, or when the
        archive has no mask for this frame.
    """

    time_s: int
    path: str
    index: int = 0
    mask_path: str | None = None


@dataclass
class Frame:
    """One frame as read from the archive, or the reason it cannot be used.

    Attributes
    ----------
    pixels : numpy.ndarray or None
        uint8 (H, W), stored encoding (:data:`PIXEL_ENCODING`); None when the frame is bad.
    mask : numpy.ndarray or None
        bool (H, W), True = valid pixel. None when the frame is bad, or when the archive holds no
        mask for it (ingest then stores an all-valid mask and warns).
    reason : str or None
        One line saying why the frame is bad; None for a good frame.
    bad_path : str or None
        The file ``reason`` is about when it is not the frame's own ``FrameRef.path`` (for example an
        unreadable HKO-7 mask file).
    """

    pixels: np.ndarray | None
    mask: np.ndarray | None = None
    reason: str | None = None
    bad_path: str | None = None

    @property
    def ok(self) -> bool:
        """True for a usable frame."""
        return self.reason is None

    @classmethod
    def bad(cls, reason: str, bad_path: str | None = None) -> "Frame":
        """A bad frame: no pixels, no mask, and why."""
        return cls(None, None, reason, bad_path)


@dataclass
class Listing:
    """What an archive holds.

    Attributes
    ----------
    frames : list of FrameRef
        One per frame time, sorted by ``time_s`` (times are unique).
    bad : list of dict
        ``{"path": str, "reason": str}`` for files that could not even be listed (a name that does
        not parse, a second file for the same time, ...); paths relative to the archive root.
    """

    frames: list[FrameRef] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)

    def times_s(self) -> np.ndarray:
        """int64 (N,) frame times, seconds since the epoch (ascending)."""
        return np.fromiter((f.time_s for f in self.frames), dtype=np.int64, count=len(self.frames))


class Source:
    """One archive format. Subclass it, set the class attributes and implement
    :meth:`detect`, :meth:`list_frames` and :meth:`read_frame`.

    Class attributes
    ----------------
    name : registry key (``"hko7"``).
    title : the format as people write it (``"HKO-7"``); recorded in the store's ``source`` attribute.
    hint : what an archive of this format looks like, for the error when none is recognised
        (``"an HKO-7 archive (a radarPNG/ folder)"``).

    Instances are stateless and picklable (Dask workers receive them).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    hint: ClassVar[str] = ""

    def detect(self, root: Path) -> bool:
        """True if ``root`` looks like an archive of this format (a cheap check: folders, suffixes)."""
        raise NotImplementedError

    def list_frames(self, root: Path) -> Listing:
        """Every frame of the archive at ``root`` with its time, plus the files that cannot be listed.

        Raises NowcastError when ``root`` is not an archive of this format.
        """
        raise NotImplementedError

    def read_frame(self, root: Path, ref: FrameRef, shape: tuple[int, int] | None = None) -> Frame:
        """Read one frame.

        Parameters
        ----------
        root : the archive root.
        ref : a frame of :meth:`list_frames`.
        shape : the expected (H, W) in pixels; a frame of another size is bad. None accepts any size.

        Returns
        -------
        Frame : pixels uint8 (H, W) and mask bool (H, W) (or None: no mask in the archive), or
            ``reason`` set when the frame cannot be used. Never raises for a bad file.
        """
        raise NotImplementedError

    def read_frames(self, root: Path, refs: Sequence[FrameRef],
                    shape: tuple[int, int] | None = None) -> Iterator[Frame]:
        """:meth:`read_frame` for each of ``refs``, in order. Formats override this when reading
        neighbouring frames together is cheaper (several times in one file, repeated masks)."""
        for ref in refs:
            yield self.read_frame(root, ref, shape)

    def frame_shape(self, root: Path, listing: Listing) -> tuple[int, int]:
        """The archive's frame size (H, W) in pixels: the most common size among up to 64 frames
        spread over ``listing`` (bad frames are skipped). Formats override this when a header says it.

        Raises NowcastError when no sampled frame can be read.
        """
        sizes = Counter(frame.pixels.shape for frame in self.read_frames(root, sample_frames(listing.frames))
                        if frame.ok)
        if not sizes:
            raise NowcastError(f"no readable frame found in {root}: nothing to ingest")
        return sizes.most_common(1)[0][0]


def sample_frames(refs: Sequence[FrameRef], n: int = _SHAPE_SAMPLE) -> list[FrameRef]:
    """Up to ``n`` of ``refs`` spread evenly from the first to the last."""
    if not refs:
        return []
    return [refs[i] for i in np.unique(np.linspace(0, len(refs) - 1, n).astype(int))]


def one_line(exc: BaseException) -> str:
    """A deterministic one-line reason from an exception (no object addresses), so that re-runs
    write identical reports; the exception's type name when it has no message."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc)).replace("\n", " ").strip()
    return text or type(exc).__name__


def walk_files(root: Path, sub: str) -> Iterable[str]:
    """Non-hidden files under ``root / sub``, as sorted POSIX paths relative to ``root``."""
    for dirpath, dirnames, filenames in os.walk(root / sub):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name).relative_to(root).as_posix()
