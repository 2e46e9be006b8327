"""The HKO-7 archive format: layout (file paths <-> times), frame and mask codecs, and its source.

Layout (relative to the archive root)::

    radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png        8-bit grayscale, pixel = round(255 * (dBZ + 10) / 70)
    radarPNG_mask/YYYY/MM/DD/RADyymmddHHMM00.mask  zlib-compressed raw bytes of an (H, W) bool array

File-name times are read as UTC (int seconds since the Unix epoch). The frames are already in the
stored pixel encoding (``pipeline.sources.base.PIXEL_ENCODING``), so reading is decoding only.
"""

from __future__ import annotations

import filecmp
import io
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin  # noqa: F401 (the PNG decoder, loaded with the module, not at the first frame)

from pipeline.errors import NowcastError
from pipeline.sources.base import (
    Frame,
    FrameRef,
    Listing,
    Source,
    one_line,
    resolve_duplicates,
    sample_frames,
    walk_files,
)

FRAME_DIR = "radarPNG"
MASK_DIR = "radarPNG_mask"
FRAME_SUFFIX = ".png"
MASK_SUFFIX = ".mask"
_NAME_RE = re.compile(
    r"^RAD([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})$"
)  # ASCII digits only
#: Largest frame decoded when the expected size is not known (the header is checked before decoding).
MAX_FRAME_PIXELS = 4096 * 4096


class FrameDecodeError(ValueError):
    """A frame or mask file that cannot be used (corrupt, truncated, wrong size or depth)."""


# ------------------------------------------------------------------------------------------ names
def file_stem(time_s: int) -> str:
    """Epoch seconds (UTC) -> ``RADyymmddHHMM00``."""
    t = np.datetime64(int(time_s), "s").astype(object)
    return f"RAD{t.year % 100:02d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}00"


def _day_dir(time_s: int) -> str:
    t = np.datetime64(int(time_s), "s").astype(object)
    return f"{t.year:04d}/{t.month:02d}/{t.day:02d}"


def frame_path(root: str | Path, time_s: int) -> Path:
    """Path of the PNG frame for a time (epoch seconds, UTC)."""
    return Path(root) / FRAME_DIR / _day_dir(time_s) / (file_stem(time_s) + FRAME_SUFFIX)


def mask_path(root: str | Path, time_s: int) -> Path:
    """Path of the mask file for a time (epoch seconds, UTC)."""
    return Path(root) / MASK_DIR / _day_dir(time_s) / (file_stem(time_s) + MASK_SUFFIX)


def time_from_name(path: str | Path) -> int | None:
    """``.../RADyymmddHHMM00.png`` (or ``.mask``) -> epoch seconds (UTC); None if the name does not parse.

    Two-digit years are 20yy (HKO-7 covers 2009-2015).
    """
    m = _NAME_RE.match(Path(path).stem)
    if m is None:
        return None
    yy, mo, dd, hh, mi, ss = (int(g) for g in m.groups())
    try:
        t = np.datetime64(f"{2000 + yy:04d}-{mo:02d}-{dd:02d}T{hh:02d}:{mi:02d}:{ss:02d}", "s")
    except ValueError:
        return None
    return int(t.astype(np.int64))


# ------------------------------------------------------------------------------------------ codecs
def encode_frame(pixels_u8: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (8-bit grayscale)."""
    if pixels_u8.dtype != np.uint8 or pixels_u8.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {pixels_u8.dtype} {pixels_u8.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels_u8, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_frame(data: bytes, shape: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> (H, W) uint8. Raises FrameDecodeError for corrupt/truncated data, an image that is
    not a PNG (whatever its name), a non-8-bit-grayscale image, or a size other than ``shape`` (when
    given; else larger than :data:`MAX_FRAME_PIXELS`). Type and size are read from the header before
    any pixel is decoded, so a small file claiming a huge image costs nothing."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.mode != "L":
                raise FrameDecodeError(f"image mode {img.mode!r}, expected 8-bit grayscale 'L'")
            width, height = img.size
            if shape is not None and (height, width) != tuple(shape):
                raise FrameDecodeError(f"image size {(height, width)}, expected {tuple(shape)}")
            if height * width > MAX_FRAME_PIXELS:
                raise FrameDecodeError(
                    f"image size {(height, width)} is larger than {MAX_FRAME_PIXELS} pixels"
                )
            img.load()
            arr = np.asarray(img, dtype=np.uint8)
    except FrameDecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise FrameDecodeError("not a PNG image (the name ends in .png, the contents are not PNG)") from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise FrameDecodeError(f"cannot decode PNG: {exc}") from exc
    if shape is not None and arr.shape != tuple(shape):
        raise FrameDecodeError(f"image size {arr.shape}, expected {tuple(shape)}")
    return arr


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) bool -> zlib-compressed raw bytes (the HKO-7 ``.mask`` format)."""
    return zlib.compress(np.ascontiguousarray(mask, dtype=bool).tobytes())


def decode_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """``.mask`` bytes -> (H, W) bool. Raises FrameDecodeError if unreadable or the wrong size.

    At most H * W + 1 bytes are ever decompressed (a small file that inflates to gigabytes is
    refused after H * W + 1 bytes)."""
    n = int(shape[0]) * int(shape[1])
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, n + 1)
    except zlib.error as exc:
        raise FrameDecodeError(f"cannot decompress mask: {exc}") from exc
    if len(raw) > n:
        raise FrameDecodeError(f"mask holds more than {shape[0]}x{shape[1]} values")
    if len(raw) < n:
        raise FrameDecodeError(f"mask holds {len(raw)} values, expected {shape[0]}x{shape[1]}")
    if not inflater.eof:
        raise FrameDecodeError("mask data is truncated (the zlib stream does not end)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(bool)


class MaskCache:
    """The last decoded mask and its compressed bytes. HKO-7 masks are often byte-identical from one
    frame to the next (the radar's coverage changes rarely): equal bytes decode to the same mask, so
    the unzip is skipped. Compares the bytes themselves, never the file names."""

    def __init__(self):
        self.data: bytes | None = None
        self.mask: np.ndarray | None = None
        self.hits = 0

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """``decode_mask(data, shape)``, reusing the previous result for identical bytes.
        The returned array is shared with the cache: callers copy it (e.g. into the unit array)."""
        if (
            self.data is not None
            and self.mask is not None
            and self.mask.shape == tuple(shape)
            and data == self.data
        ):
            self.hits += 1
            return self.mask
        mask = decode_mask(data, shape)  # raises before the cache changes: a bad file is never cached
        self.data, self.mask = data, mask
        return mask


# ------------------------------------------------------------------------------------------ source
class Hko7Source(Source):
    """The HKO-7 layout: one PNG per frame under ``radarPNG/``, its mask under ``radarPNG_mask/``."""

    name = "hko7"
    title = "HKO-7"
    hint = "an HKO-7 archive (no radarPNG/ folder)"

    # The layout's names and encodings, for the stages that read or write HKO-7 files through the
    # registry (``get_source("hko7")``): predict's PNG inputs, viz's PNG frames, synth's archive.
    file_stem = staticmethod(file_stem)
    frame_path = staticmethod(frame_path)
    mask_path = staticmethod(mask_path)
    time_from_name = staticmethod(time_from_name)
    encode_frame = staticmethod(encode_frame)
    decode_frame = staticmethod(decode_frame)

    def write_frame(self, root: Path, time_s: int, pixels_u8: np.ndarray, mask: np.ndarray) -> None:
        """Write one frame (uint8 (H, W)) and its mask (bool (H, W)) at their paths under ``root``
        (folders created as needed)."""
        for path, data in (
            (frame_path(root, time_s), encode_frame(pixels_u8)),
            (mask_path(root, time_s), encode_mask(mask)),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def detect(self, root: Path) -> bool:
        return (Path(root) / FRAME_DIR).is_dir()

    def claims(self, root: Path, rel: str) -> bool:
        return rel.split("/", 1)[0] in (FRAME_DIR, MASK_DIR)

    def list_frames(self, root: Path) -> Listing:
        """Frames under ``radarPNG/**.png`` with their masks from ``radarPNG_mask/**.mask`` by time.

        Reported as bad: names that do not parse as ``RADyymmddHHMM00`` (ASCII digits), folders named
        like frame or mask files, and files for a time that another file also claims (the file at the
        canonical path wins; else identical files give the smallest path; files that differ give none:
        see :func:`~pipeline.sources.base.resolve_duplicates`). A frame without a mask file gets
        ``mask_path=None``; a mask without a frame is ignored.
        """
        root = Path(root)
        if not self.detect(root):
            raise NowcastError(
                f"{root} is not {self.hint}; pass the archive root, e.g. one made by `nowcast synth`"
            )
        bad: list[dict] = []
        found: dict[str, dict[int, str]] = {}
        for kind, sub, suffix, canon in (
            ("frames", FRAME_DIR, FRAME_SUFFIX, frame_path),
            ("masks", MASK_DIR, MASK_SUFFIX, mask_path),
        ):
            claims: dict[int, list[str]] = {}
            for rel in walk_files(root, sub, bad, (FRAME_SUFFIX, MASK_SUFFIX)):
                t = time_from_name(rel) if rel.endswith(suffix) else None
                if t is None:
                    bad.append(
                        {"path": rel, "reason": f"file name does not parse as RADyymmddHHMM00{suffix}"}
                    )
                    continue
                claims.setdefault(t, []).append(rel)
            found[kind], dup = resolve_duplicates(
                claims,
                same=lambda a, b: filecmp.cmp(root / a, root / b, shallow=False),
                canonical=lambda t, rel, canon=canon: Path(rel) == canon(Path("."), t),
            )
            bad += dup
        masks = found["masks"]
        frames = [FrameRef(t, rel, mask_path=masks.get(t)) for t, rel in sorted(found["frames"].items())]
        return Listing(frames, bad)

    def read_frame(self, root: Path, ref: FrameRef, shape: tuple[int, int] | None = None) -> Frame:
        return self._read(Path(root), ref, shape, None)

    def read_frames(
        self, root: Path, refs: Sequence[FrameRef], shape: tuple[int, int] | None = None
    ) -> Iterator[Frame]:
        """Like :meth:`read_frame`, decoding a mask only when its bytes differ from the previous one
        (the returned mask may then be shared between frames: copy it, do not modify it)."""
        cache = MaskCache()
        root = Path(root)
        for ref in refs:
            yield self._read(root, ref, shape, cache)

    def _read(self, root: Path, ref: FrameRef, shape, cache: MaskCache | None) -> Frame:
        try:
            pixels = decode_frame((root / ref.path).read_bytes(), shape)
        except (FrameDecodeError, OSError) as exc:
            return Frame.bad(one_line(exc))
        if ref.mask_path is None:
            return Frame(pixels, None)
        try:
            data = (root / ref.mask_path).read_bytes()
            mask = cache.decode(data, pixels.shape) if cache is not None else decode_mask(data, pixels.shape)
        except (FrameDecodeError, OSError) as exc:
            return Frame.bad(f"unreadable mask: {one_line(exc)}", ref.mask_path)
        return Frame(pixels, mask)

    def frame_shape(self, root: Path, listing: Listing) -> tuple[int, int]:
        """Most common (H, W) in the PNG headers of up to 64 frames spread over the archive."""
        root = Path(root)
        sizes = Counter()
        for ref in sample_frames(listing.frames):
            try:
                with Image.open(root / ref.path) as img:
                    sizes[(img.height, img.width)] += 1
            except Exception:  # noqa: BLE001 - a bad file is reported when its frame is read
                continue
        if not sizes:
            raise NowcastError(f"no readable PNG frame found in {root / FRAME_DIR}: nothing to ingest")
        return sizes.most_common(1)[0][0]
