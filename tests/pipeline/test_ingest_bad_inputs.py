"""Ingest against inputs that would silently poison a store: bogus dates, frames an append cannot take,
files rewritten after they were ingested, and files declaring frames far too large to read."""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from pipeline import ingest as ing
from pipeline import store as st
from pipeline.errors import NowcastError
from tests.pipeline import _gridded as gd
from tests.pipeline.sources._files import epoch_s
from tests.pipeline.sources.test_netcdf import _declared_bomb

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::pipeline.ingest.IngestWarning")


def run(archive, store, **kw) -> ing.IngestResult:
    kw.setdefault("workers", 0)
    kw.setdefault("chunk_frames", 2)
    kw.setdefault("shard_frames", 8)
    return ing.ingest(ing.IngestConfig(archive, store, **kw), progress=False)


def reasons(result: ing.IngestResult) -> dict[str, str]:
    return {b["path"]: b["reason"] for b in result.bad_files}


def rel(arch: gd.GriddedArchive, time_s: int) -> str:
    return gd.odim_path(arch.root, time_s).relative_to(arch.root).as_posix()


def test_frames_dated_outside_the_window_are_bad_files(tmp_path):
    """ODIM files dated 2999-12-31 and 1800-01-01 are reported as bad and the store spans only the real
    frames (not centuries of empty slots); the window is configurable."""
    arch = gd.odim_archive(tmp_path / "a", 12)
    bogus = [epoch_s("29991231000000"), epoch_s("18000101000000")]
    for time_s in bogus:
        gd.write_odim_frame(gd.odim_path(arch.root, time_s), time_s, arch.size, arch.grid)
    result = run(arch.root, tmp_path / "s.zarr")
    handle = st.Store.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(handle.time_s, arch.times_s())
    bad = reasons(result)
    for time_s in bogus:
        assert "outside the accepted window 1990-01-01T00:00:00Z.." in bad[rel(arch, time_s)]
    late = gd.T0_S + 5 * gd.IV
    narrow = run(arch.root, tmp_path / "n.zarr", latest_time=late)
    assert (
        narrow.n_frames == 6 and f"..{np.datetime64(late, 's')}Z" in reasons(narrow)[rel(arch, late + gd.IV)]
    )


def test_an_append_that_refuses_old_frames_exits_non_zero(tmp_path):
    """A frame older than the store's last time that appears later cannot be inserted: the new frames are
    stored, and `nowcast ingest` exits 1 with a one-line summary naming the refused file."""
    arch = gd.odim_archive(tmp_path / "a", 10, missing=[3])
    store = tmp_path / "s.zarr"
    args = ["ingest", str(arch.root), str(store), "--workers", "0"]
    assert runner.invoke(cli.app, args).exit_code == 0
    gd.add_odim(arch, gd.T0_S + 3 * gd.IV)
    gd.add_odim(arch, gd.T0_S + 10 * gd.IV)
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    summary = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(summary) == 1 and "1 frame(s) older than the store's last time were refused" in summary[0]
    assert rel(arch, gd.T0_S + 3 * gd.IV) in summary[0]
    handle = st.Store.open(store)
    assert handle.time_s[-1] == gd.T0_S + 10 * gd.IV and gd.T0_S + 3 * gd.IV not in handle.time_s


def test_a_file_rewritten_after_ingest_is_reported_on_re_ingest(tmp_path):
    """Re-ingesting an archive where an already-ingested file was rewritten with other data reports that
    file (the store keeps the frame it read); a file only touched (same bytes, new mtime) is not reported."""
    arch = gd.odim_archive(tmp_path / "a", 24)
    store = tmp_path / "s.zarr"
    run(arch.root, store)
    before = st.Store.open(store).reader().read(arch.times_s())[0]
    changed_t, touched_t = gd.T0_S + 2 * gd.IV, gd.T0_S + 5 * gd.IV
    pix, mask = gd.pixels(changed_t + 7 * gd.IV, arch.size)  # another frame's data, same grid and time
    gd.write_odim_frame(gd.odim_path(arch.root, changed_t), changed_t, arch.size, arch.grid, pix, mask)
    for time_s in (changed_t, touched_t):
        path = gd.odim_path(arch.root, time_s)
        later = path.stat().st_mtime_ns + 10**10
        os.utime(path, ns=(later, later))
    again = run(arch.root, store)
    bad = reasons(again)
    assert "changed since it was ingested" in bad[rel(arch, changed_t)]
    assert rel(arch, touched_t) not in bad and again.n_bad == 1
    np.testing.assert_array_equal(st.Store.open(store).reader().read(arch.times_s())[0], before)


def test_files_declaring_huge_frames_are_bad_and_the_ingest_goes_on(tmp_path):
    """A NetCDF file declaring 40000 x 40000 float32 among good files is reported as bad and the others are
    ingested; --max-frame-pixels below the real frame size refuses every file with the limit in the reason."""
    arch = gd.netcdf_archive(tmp_path / "a", 24)
    _declared_bomb(arch.root / "bomb.nc")
    result = run(arch.root, tmp_path / "s.zarr")
    assert "refused before reading" in reasons(result)["bomb.nc"]
    np.testing.assert_array_equal(st.Store.open(tmp_path / "s.zarr").time_s, arch.times_s())
    with pytest.raises(NowcastError, match="more than the limit of 1,000"):
        run(arch.root, tmp_path / "t.zarr", max_frame_pixels=1000)


def test_cli_options_set_the_time_window_and_the_frame_size_limit(tmp_path):
    """`nowcast ingest --latest` reports later frames as bad; `--max-frame-pixels` below the frame size is
    a one-line error naming the limit."""
    arch = gd.odim_archive(tmp_path / "a", 6)
    late = gd.T0_S + 3 * gd.IV
    base = ["ingest", str(arch.root), "--workers", "0"]
    result = runner.invoke(cli.app, [*base[:2], str(tmp_path / "s.zarr"), *base[2:], "--latest", str(late)])
    assert result.exit_code == 0, result.output
    assert "4 frames" in result.output and "2 bad files" in result.output
    result = runner.invoke(
        cli.app, [*base[:2], str(tmp_path / "t.zarr"), *base[2:], "--max-frame-pixels", "100"]
    )
    assert result.exit_code == 1 and "more than the limit of 100" in result.output, result.output
