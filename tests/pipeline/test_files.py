"""pipeline.files: outputs written through a temporary file get the mode the umask gives a plain open."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline import files


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    """write_bytes/write_json and temp_file (CF-NetCDF forecasts) give 0666 less the umask, not mkstemp's
    0600; umask() reads the mask without changing it."""
    previous = os.umask(mask)
    try:
        assert files.umask() == mask
        written = [
            files.write_bytes(tmp_path / "a.png", b"x"),
            files.write_json(tmp_path / "b.json", {"a": 1}),
        ]
        fd, temp = files.temp_file(tmp_path / "c.nc")
        os.close(fd)
        written.append(temp)
    finally:
        os.umask(previous)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
