"""The `nowcast` CLI: help, version, and error paths (CliRunner and a real subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()
COMMANDS = [
    "synth",
    "ingest",
    "info",
    "train",
    "evaluate",
    "calibrate",
    "predict",
    "watch",
    "serve",
    "promote",
    "demo",
]


def test_help_lists_every_command():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name):
    result = runner.invoke(cli.app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("nowcast ")


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, cli\n"
        "from typer.testing import CliRunner\n"
        "CliRunner().invoke(cli.app, ['--help'])\n"
        "heavy = [m for m in ('ray', 'mlflow', 'dask', 'zarr', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_command_is_usage_error():
    result = runner.invoke(cli.app, ["frobnicate"])
    assert result.exit_code == 2


def test_missing_store_is_one_clear_line(tmp_path):
    result = runner.invoke(cli.app, ["info", str(tmp_path / "nope.zarr")])
    assert result.exit_code != 0
    assert "error:" in result.output
    assert "Traceback" not in result.output


def test_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    result = runner.invoke(cli.app, ["info", str(tmp_path / "plain")])
    assert result.exit_code != 0
    assert "error:" in result.output


def test_unknown_model_uri(tmp_path):
    result = runner.invoke(
        cli.app,
        ["predict", "--model", "no-such-model", "--out-dir", str(tmp_path / "f"), "--store", str(tmp_path)],
    )
    assert result.exit_code != 0
    assert "error:" in result.output
    assert "Traceback" not in result.output


def test_ingest_of_missing_archive(tmp_path):
    result = runner.invoke(cli.app, ["ingest", str(tmp_path / "no-archive"), str(tmp_path / "s.zarr")])
    assert result.exit_code != 0
    assert "error:" in result.output


def test_bad_synth_settings_are_reported(tmp_path):
    result = runner.invoke(cli.app, ["synth", str(tmp_path / "a"), "--days", "0"])
    assert result.exit_code != 0
    assert "error:" in result.output


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_debug_shows_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "--debug", "info", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_subprocess_unknown_option_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "ingest", "--no-such-option"], capture_output=True, text=True
    )
    assert proc.returncode == 2


def test_parse_split_option_range_and_day_list(tmp_path):
    import numpy as np

    from pipeline.catalog import parse_split_option

    name, spec = parse_split_option("test=2015-01-01..2016-01-01")
    assert name == "test" and spec == (np.datetime64("2015-01-01"), np.datetime64("2016-01-01"))
    assert parse_split_option("valid=..2015-03-01")[1] == (None, np.datetime64("2015-03-01"))
    day_list = tmp_path / "days.txt"
    day_list.write_text("20150602, 12.5\n20150601, 3.0\n")
    name, spec = parse_split_option(f"train={day_list}")
    assert name == "train" and spec == [np.datetime64("2015-06-01"), np.datetime64("2015-06-02")]
    for bad in ("test", "=x", "test=", "test=2015-13-45..", f"test={tmp_path / 'missing.txt'}"):
        with pytest.raises(ValueError, match=f"split '{re.escape(bad)}': "):
            parse_split_option(bad)


def test_malformed_split_is_usage_error(tmp_path):
    result = runner.invoke(
        cli.app, ["ingest", str(tmp_path), str(tmp_path / "s.zarr"), "--split", "nonsense"]
    )
    assert result.exit_code == 2
    assert "NAME=" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_no_python_types(name):
    """Flags show no placeholder, values click's INTEGER/TEXT/PATH (not <bool>, <list[str]>, <int>)."""
    result = runner.invoke(cli.app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for python_type in ("<bool>", "<list[", "<int>", "<str>", "<float>", "<path>"):
        assert python_type not in result.output, f"`nowcast {name} --help` shows {python_type}"


def test_info_prints_splits_as_lines_not_a_python_dict(tmp_path):
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    synth_archive(
        SynthConfig(out_dir=tmp_path / "a", days=3, frames_per_day=40, size_px=16, workers=1), progress=False
    )
    ingest(IngestConfig(archive=tmp_path / "a", store=tmp_path / "s.zarr", workers=0), progress=False)
    result = runner.invoke(cli.app, ["info", str(tmp_path / "s.zarr")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "{" not in result.output and "'" not in result.output
    assert "train: " in result.output and "sequent clips" in result.output
