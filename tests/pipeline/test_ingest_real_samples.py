"""Ingest of archives written by weather services (the samples in shared/data/real-radar): a BoM
Rainfields CF-NetCDF day (6-minute accumulations) and an RMI ODIM_H5 QPE (5-minute float32 RATE), each
checked frame by frame against pysteps' importer of the same files after the store's pixel encoding."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline import ingest as ing
from pipeline import store as st
from pipeline.sources import dbz_to_u8
from pipeline.sources.grid import ZR

pysteps_io = pytest.importorskip("pysteps.io")

REPO = Path(__file__).resolve().parents[2]
#: The samples: $NOWCAST_REAL_RADAR, else shared/data/real-radar in or beside the checkout.
REAL = next(
    (
        path
        for path in [Path(os.environ.get("NOWCAST_REAL_RADAR", REPO / "shared" / "data" / "real-radar"))]
        + [up / "shared" / "data" / "real-radar" for up in REPO.parents[:2]]
        if path.is_dir()
    ),
    REPO / "shared" / "data" / "real-radar",
)
BOM = REAL / "bom-rainfields-melbourne-6min"
RMI = REAL / "rmi-qpe-5min"
N_FILES = 6  # a subset keeps the test fast; consecutive files, so the cadence is the archive's

pytestmark = pytest.mark.skipif(not (BOM.is_dir() and RMI.is_dir()), reason="real-radar samples absent")


def _copy_subset(folder: Path, dest: Path, start: int = 10) -> list[Path]:
    """Copy ``N_FILES`` consecutive files of a sample archive into ``dest`` -> the copies, in time order."""
    dest.mkdir()
    files = sorted(p for p in folder.iterdir() if p.is_file())[start : start + N_FILES]
    return [Path(shutil.copy(p, dest / p.name)) for p in files]


def _name_time_s(path: Path, digits: slice) -> int:
    """The time written in a file name (the providers name files by the end of the period), epoch s."""
    text = "".join(ch for ch in path.name if ch.isdigit())[digits]
    return int(datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp())


def _expected(rain_mm_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pysteps' rain rate (mm/h, NaN = no data) -> (stored pixels, mask) with the store's encoding and the
    default Z-R relation (pixel 0 where not valid)."""
    valid = np.isfinite(rain_mm_h)
    dbz = ZR().rain_to_dbz(np.where(valid, np.maximum(rain_mm_h, 0.0), 0.0))
    return np.where(valid, dbz_to_u8(dbz), 0).astype(np.uint8), valid


def _ingest(archive: Path, store: Path) -> tuple[st.Store, np.ndarray, np.ndarray]:
    result = ing.ingest(ing.IngestConfig(archive, store, workers=0), progress=False)
    assert result.n_bad == 0, result.bad_files
    handle = st.Store.open(store)
    frames, masks = handle.reader().read(handle.time_s)
    return handle, frames, masks


def _assert_close(frames, masks, expected_frames, expected_masks, name: str) -> None:
    np.testing.assert_array_equal(masks, expected_masks, err_msg=name)
    diff = np.abs(frames.astype(int) - expected_frames.astype(int))
    assert diff.max() <= 1, f"{name}: pixels differ by up to {diff.max()} levels"


@pytest.mark.filterwarnings("ignore::pipeline.ingest.IngestWarning")
def test_bom_rainfields_netcdf_matches_pysteps(tmp_path):
    """Every BoM Rainfields file (CF-1.6, 6-minute precipitation_amount in kg m-2, scalar valid_time,
    Albers x/y in km) is a frame at its valid time (the end of its period), 6 minutes apart, whose pixels
    are pysteps' import_bom_rf3 accumulation / 0.1 h as rain rate, within one level."""
    files = _copy_subset(BOM, tmp_path / "bom")
    handle, frames, masks = _ingest(tmp_path / "bom", tmp_path / "bom.zarr")
    assert handle.interval_s == 360
    np.testing.assert_array_equal(handle.time_s, [_name_time_s(p, slice(1, 15)) for p in files])
    assert handle.present.all()
    for i, path in enumerate(files):
        amount_mm, _, meta = pysteps_io.import_bom_rf3(str(path))
        assert meta["accutime"] == 6 and meta["unit"] == "mm"
        rain_mm_h = np.ma.filled(np.ma.masked_invalid(amount_mm).astype(float), np.nan) * 60.0 / 6.0
        _assert_close(frames[i], masks[i], *_expected(rain_mm_h), path.name)
    assert frames.max() > 0  # the subset holds rain: the comparison is not of empty frames
    grid = handle.source_settings["source_grid"]
    assert grid["x_step"] == grid["y_step"] == 500.0  # 0.5 km in the file, metres in the store


@pytest.mark.filterwarnings("ignore::pipeline.ingest.IngestWarning")
def test_rmi_qpe_odim_matches_pysteps(tmp_path):
    """Every RMI QPE file (ODIM_H5 COMP, float32 RATE without gain/offset/nodata, NaN = no data) is a
    frame at its nominal time, 5 minutes apart, equal to pysteps' import_odim_hdf5(qty="RATE") after the
    store's encoding within one level, with NaN pixels masked out."""
    files = _copy_subset(RMI, tmp_path / "rmi")
    handle, frames, masks = _ingest(tmp_path / "rmi", tmp_path / "rmi.zarr")
    assert handle.interval_s == 300
    np.testing.assert_array_equal(handle.time_s, [_name_time_s(p, slice(0, 14)) for p in files])
    assert handle.present.all()
    for i, path in enumerate(files):
        rain_mm_h, _, meta = pysteps_io.import_odim_hdf5(str(path), qty="RATE")
        assert meta["unit"] == "mm/h"
        _assert_close(frames[i], masks[i], *_expected(np.asarray(rain_mm_h, float)), path.name)
    assert frames.max() > 0 and not masks.all() and masks.any()
