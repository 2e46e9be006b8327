"""The HKO-7 source: names, codecs, listing an archive, reading frames, and the source registry."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError
from pipeline.sources import SOURCES, Frame, FrameRef, Listing, detect_format, get_source, hko7
from pipeline.sources.hko7 import Hko7Source

T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))


def test_names_round_trip():
    t = T0_S + 13 * INTERVAL_S
    assert hko7.file_stem(t) == "RAD150601011800"
    assert hko7.time_from_name(hko7.frame_path("/a", t)) == t
    assert hko7.time_from_name(hko7.mask_path("a", t)) == t
    assert hko7.frame_path("a", t).as_posix() == "a/radarPNG/2015/06/01/RAD150601011800.png"
    assert hko7.mask_path("a", t).as_posix() == "a/radarPNG_mask/2015/06/01/RAD150601011800.mask"
    for bad in ("RADbad.png", "RAD150601006000.png", "RAD15060100000.png", "notes.txt"):
        assert hko7.time_from_name(bad) is None


def test_codecs_round_trip_and_reject_bad_bytes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 9)).astype(np.uint8)
    mask = rng.random((7, 9)) > 0.3
    np.testing.assert_array_equal(hko7.decode_frame(hko7.encode_frame(pixels)), pixels)
    np.testing.assert_array_equal(hko7.decode_mask(hko7.encode_mask(mask), (7, 9)), mask)
    with pytest.raises(hko7.FrameDecodeError, match="expected"):
        hko7.decode_frame(hko7.encode_frame(pixels), (9, 7))
    with pytest.raises(hko7.FrameDecodeError, match="not a PNG image"):
        hko7.decode_frame(b"not a png")
    with pytest.raises(hko7.FrameDecodeError, match="mask holds more than 3x3 values"):
        hko7.decode_mask(hko7.encode_mask(mask), (3, 3))


def test_registry_and_detection(tmp_path, hand_archive):
    assert get_source("hko7") is SOURCES["hko7"] and isinstance(SOURCES["hko7"], Hko7Source)
    with pytest.raises(NowcastError, match="unknown archive format") as err:
        get_source("grib")
    assert err.value.exit_code == 2
    arch = hand_archive(3)
    assert detect_format(arch.root).name == "hko7"
    with pytest.raises(NowcastError, match="not an HKO-7 archive"):
        detect_format(tmp_path / "nothing-here")


def test_list_frames_reports_bad_names_and_duplicates(hand_archive):
    arch = hand_archive(6)
    root = arch.root
    ts = arch.times_s()
    day_dir = hko7.frame_path(root, ts[0]).parent
    (day_dir / "RADbad.png").write_bytes(b"x")
    (day_dir / "RAD150601006000.png").write_bytes(b"x")  # minute 60
    elsewhere = root / "radarPNG" / "2015" / "06" / "02"
    elsewhere.mkdir(parents=True)
    dup = elsewhere / (
        hko7.file_stem(ts[1]) + ".png"
    )  # same time as a canonical frame: the canonical one wins
    dup.write_bytes(b"x")
    hko7.mask_path(root, ts[4]).unlink()
    listing = Hko7Source().list_frames(root)
    assert isinstance(listing, Listing)
    assert [f.time_s for f in listing.frames] == ts.tolist()
    assert all(f.path == hko7.frame_path(".", f.time_s).as_posix().removeprefix("./") for f in listing.frames)
    assert listing.frames[4].mask_path is None and listing.frames[3].mask_path.endswith(".mask")
    np.testing.assert_array_equal(listing.times_s(), ts)
    bad = {b["path"]: b["reason"] for b in listing.bad}
    assert "duplicate" in bad[dup.relative_to(root).as_posix()]
    assert {"radarPNG/2015/06/01/RADbad.png", "radarPNG/2015/06/01/RAD150601006000.png"} <= set(bad)


def test_read_frame_good_bad_and_maskless(hand_archive):
    arch = hand_archive(5)
    source = get_source("hko7")
    listing = source.list_frames(arch.root)
    ts = arch.times_s()
    frame = source.read_frame(arch.root, listing.frames[0], (64, 64))
    assert frame.ok and frame.pixels.dtype == np.uint8 and frame.mask.dtype == bool
    np.testing.assert_array_equal(frame.pixels, arch.frames[int(ts[0])])
    np.testing.assert_array_equal(frame.mask, arch.masks[int(ts[0])])
    wrong = source.read_frame(arch.root, listing.frames[0], (32, 32))
    assert not wrong.ok and wrong.pixels is None and "expected" in wrong.reason and wrong.bad_path is None
    hko7.mask_path(arch.root, ts[1]).write_bytes(b"garbage")
    broken = source.read_frame(arch.root, listing.frames[1], (64, 64))
    assert broken.reason.startswith("unreadable mask") and broken.bad_path == listing.frames[1].mask_path
    maskless = source.read_frame(arch.root, FrameRef(int(ts[2]), listing.frames[2].path), None)
    assert maskless.ok and maskless.mask is None
    gone = source.read_frame(arch.root, FrameRef(int(ts[2]), "radarPNG/nope.png"))
    assert not gone.ok and gone.reason
    batch = list(source.read_frames(arch.root, listing.frames, (64, 64)))
    assert [f.ok for f in batch] == [True, False, True, True, True]
    for f, ref in zip(batch, listing.frames):
        if f.ok:
            np.testing.assert_array_equal(f.pixels, arch.frames[ref.time_s])
    assert source.frame_shape(arch.root, listing) == (64, 64)


def test_source_and_refs_pickle():
    source = get_source("hko7")
    assert type(pickle.loads(pickle.dumps(source))) is Hko7Source
    ref = FrameRef(T0_S, "radarPNG/x.png", 0, "radarPNG_mask/x.mask")
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert Frame.bad("why", "f").reason == "why" and not Frame.bad("why").ok


def test_mask_cache_reuses_only_identical_bytes():
    """MaskCache.decode == hko7.decode_mask for every input; equal bytes hit, other bytes decode;
    a bad file raises and leaves the cache as it was."""
    rng = np.random.default_rng(3)
    a, b = rng.random((6, 5)) > 0.5, rng.random((6, 5)) > 0.5
    da, db = hko7.encode_mask(a), hko7.encode_mask(b)
    cache = hko7.MaskCache()
    seq = [da, bytes(bytearray(da)), db, da, da, b"not zlib", da]
    hits = []
    for data in seq:
        if data == b"not zlib":
            with pytest.raises(hko7.FrameDecodeError, match="cannot decompress mask"):
                cache.decode(data, (6, 5))
            continue
        before = cache.hits
        got = cache.decode(data, (6, 5))
        np.testing.assert_array_equal(got, a if data == da else b)
        hits.append(cache.hits - before)
    assert hits == [0, 1, 0, 0, 1, 1]  # a copy of equal bytes hits; a change of bytes decodes
    # same bytes, other shape: decoded (and rejected), no hit
    with pytest.raises(hko7.FrameDecodeError, match="mask holds more than 3x5 values"):
        cache.decode(da, (3, 5))


# --------------------------------------------------------------------------- mask bombs and odd file names


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width x height black pixels, compressed row by row (it never
    exists uncompressed in memory): ~1 KB per 1,000,000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def zlib_bomb(n_bytes: int) -> bytes:
    """zlib data that inflates to ``n_bytes`` zero bytes (~1 KB per MB)."""
    import zlib

    packer = zlib.compressobj(9)
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(n_bytes >> 20)) + packer.flush()


BOMB_SCRIPT = """
import resource, sys
from pipeline.sources import hko7
data = open(sys.argv[2], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if sys.argv[1] == "mask":
        hko7.decode_mask(data, (64, 64))
    else:
        hko7.decode_frame(data, None if sys.argv[1] == "png-any" else (64, 64))
    print("decoded")
except hko7.FrameDecodeError as exc:
    print("refused:", exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MiB
"""


@pytest.mark.parametrize("kind", ["mask", "png", "png-any"])
def test_decompression_bombs_are_refused_without_inflating(kind, tmp_path):
    """A 200 MB mask in a 200 KB file and a 13000 x 13000 PNG in ~170 KB: refused, and the peak memory of
    the process that reads them grows by less than 32 MiB."""
    import subprocess
    import sys
    from pathlib import Path

    data = zlib_bomb(200 << 20) if kind == "mask" else png_bomb(13_000, 13_000)
    assert len(data) < 400_000
    path = tmp_path / "bomb"
    path.write_bytes(data)
    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, kind, str(path)],
        capture_output=True,
        text=True,
        cwd=repo,
        env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[0].startswith("refused:"), lines
    assert ("more than 64x64" if kind == "mask" else "image size (13000, 13000)") in lines[0]
    assert int(lines[1]) < 32, f"{lines[1]} MiB more memory while refusing the bomb"


def test_mask_decoding_needs_the_whole_stream():
    import zlib

    mask = np.ones((8, 8), bool)
    data = hko7.encode_mask(mask)
    with pytest.raises(hko7.FrameDecodeError, match="truncated"):
        hko7.decode_mask(data[:-3], (8, 8))  # the zlib trailer is cut off
    with pytest.raises(hko7.FrameDecodeError, match="holds 32 values"):
        hko7.decode_mask(zlib.compress(bytes(32)), (8, 8))


def test_a_jpeg_named_png_is_not_a_frame():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8), mode="L").save(buf, format="JPEG")
    with pytest.raises(hko7.FrameDecodeError, match="not a PNG"):
        hko7.decode_frame(buf.getvalue(), (64, 64))


def test_unicode_digits_are_not_a_time():
    assert hko7.time_from_name("RAD150601000600.png") == T0_S + INTERVAL_S
    for name in ("RAD１５0601000600.png", "RAD١٥٠٦٠١٠٠٠٦٠٠.png", "RAD15060100060\u0660.png"):
        assert hko7.time_from_name(name) is None, name


def test_listing_reports_folders_and_chooses_duplicates_deterministically(hand_archive):
    """A folder named like a frame is reported; two files for one time with neither at the canonical
    path: identical -> the smaller path is used, different -> neither (both reported); the same choice
    whatever order the files were created in."""
    arch = hand_archive(6)
    root, ts = arch.root, arch.times_s()
    folder = hko7.frame_path(root, ts[5]).with_name("RAD150601003600.png")  # a folder, no file for its time
    folder.mkdir()
    (folder / "inside.txt").write_text("x")
    choices = []
    for order in (("a", "b"), ("b", "a")):
        for k in (1, 2):
            hko7.frame_path(root, ts[k]).unlink(missing_ok=True)
            for sub in order:
                path = root / "radarPNG" / "2015" / "06" / sub / (hko7.file_stem(ts[k]) + ".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                same = k == 1 or sub == "a"
                path.write_bytes(hko7.encode_frame(arch.frames[ts[k]] if same else 255 - arch.frames[ts[k]]))
        listing = Hko7Source().list_frames(root)
        bad = {b["path"]: b["reason"] for b in listing.bad}
        choices.append(([(f.time_s, f.path) for f in listing.frames], sorted(bad.items())))
    assert choices[0] == choices[1]
    frames, bad = dict(choices[0][0]), dict(choices[0][1])
    assert "a folder named like a frame file" in bad["radarPNG/2015/06/01/RAD150601003600.png"]
    stem1, stem2 = hko7.file_stem(ts[1]), hko7.file_stem(ts[2])
    assert frames[int(ts[1])] == f"radarPNG/2015/06/a/{stem1}.png"
    assert bad[f"radarPNG/2015/06/b/{stem1}.png"].endswith(f"radarPNG/2015/06/a/{stem1}.png is used")
    assert int(ts[2]) not in frames
    assert (
        "differ" in bad[f"radarPNG/2015/06/a/{stem2}.png"]
        and "differ" in bad[f"radarPNG/2015/06/b/{stem2}.png"]
    )
