"""The HKO-7 archive layout: file paths <-> timestamps, and the frame and mask codecs.

Layout (relative to the archive root)::

    radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png        8-bit grayscale, pixel = round(255 * (dBZ + 10) / 70)
    radarPNG_mask/YYYY/MM/DD/RADyymmddHHMM00.mask  zlib-compressed raw bytes of an (H, W) bool array

File-name times are read as UTC (the store keeps int64 seconds since the Unix epoch).
"""
from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import numpy as np

FRAME_DIR = "radarPNG"
MASK_DIR = "radarPNG_mask"
FRAME_SUFFIX = ".png"
MASK_SUFFIX = ".mask"
INTERVAL_S = 360  # HKO-7 cadence: one frame every 6 minutes
_NAME_RE = re.compile(r"^RAD(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$")


class FrameDecodeError(ValueError):
    """A frame or mask file that cannot be used (corrupt, truncated, wrong size or depth)."""


def file_stem(time_s: int) -> str:
    """Epoch seconds (UTC) -> ``RADyymmddHHMM00``."""
    t = np.datetime64(int(time_s), "s").astype(object)
    return f"RAD{t.year % 100:02d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}00"


def iso_utc(time_s: int) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), for messages and summaries."""
    return str(np.datetime64(int(time_s), "s")) + "Z"


def _day_dir(time_s: int) -> str:
    t = np.datetime64(int(time_s), "s").astype(object)
    return f"{t.year:04d}/{t.month:02d}/{t.day:02d}"


def frame_path(root: str | Path, time_s: int) -> Path:
    """Path of the PNG frame for a time (epoch seconds, UTC)."""
    return Path(root) / FRAME_DIR / _day_dir(time_s) / (file_stem(time_s) + FRAME_SUFFIX)


def mask_path(root: str | Path, time_s: int) -> Path:
    """Path of the mask file for a time (epoch seconds, UTC)."""
    return Path(root) / MASK_DIR / _day_dir(time_s) / (file_stem(time_s) + MASK_SUFFIX)


def parse_time_s(path: str | Path) -> int | None:
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


def encode_frame(pixels_u8: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (8-bit grayscale)."""
    from PIL import Image

    if pixels_u8.dtype != np.uint8 or pixels_u8.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {pixels_u8.dtype} {pixels_u8.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels_u8, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_frame(data: bytes, shape: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> (H, W) uint8. Raises FrameDecodeError for corrupt/truncated data,
    a non-8-bit-grayscale image, or a size other than ``shape`` (when given)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "L":
                raise FrameDecodeError(f"image mode {img.mode!r}, expected 8-bit grayscale 'L'")
            img.load()
            arr = np.asarray(img, dtype=np.uint8)
    except FrameDecodeError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise FrameDecodeError(f"cannot decode PNG: {exc}") from exc
    if shape is not None and arr.shape != tuple(shape):
        raise FrameDecodeError(f"image size {arr.shape}, expected {tuple(shape)}")
    return arr


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) bool -> zlib-compressed raw bytes (the HKO-7 ``.mask`` format)."""
    return zlib.compress(np.ascontiguousarray(mask, dtype=bool).tobytes())


def decode_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """``.mask`` bytes -> (H, W) bool. Raises FrameDecodeError if unreadable or the wrong size."""
    try:
        raw = zlib.decompress(data)
    except zlib.error as exc:
        raise FrameDecodeError(f"cannot decompress mask: {exc}") from exc
    if len(raw) != shape[0] * shape[1]:
        raise FrameDecodeError(f"mask holds {len(raw)} values, expected {shape[0]}x{shape[1]}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(bool)


def dbz_to_u8(dbz: np.ndarray) -> np.ndarray:
    """Reflectivity in dBZ -> stored uint8 pixel ``round(255 * (dBZ + 10) / 70)``, clipped."""
    return np.clip(np.rint(255.0 * (np.asarray(dbz, dtype=np.float64) + 10.0) / 70.0), 0, 255).astype(np.uint8)


def read_day_list(path: str | Path) -> list[np.datetime64]:
    """Read an HKO-7 day list (``YYYYMMDD, <daily rain mm>`` per line; the rain column is optional)
    -> sorted datetime64[D] days."""
    days = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split(",")[0].strip()
        if not text or text.startswith("#"):
            continue
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError(f"{path}:{line_no}: expected YYYYMMDD, got {text!r}")
        days.append(np.datetime64(f"{text[:4]}-{text[4:6]}-{text[6:]}", "D"))
    return sorted(days)


def write_day_list(path: str | Path, days_rain_mm: list[tuple[np.datetime64, float]]) -> None:
    """Write an HKO-7 day list: one ``YYYYMMDD, <daily rain mm>`` line per day."""
    lines = [f"{str(np.datetime64(d, 'D')).replace('-', '')}, {rain:.1f}" for d, rain in days_rain_mm]
    Path(path).write_text("\n".join(lines) + "\n")
