"""pipeline.demo: its settings are checked before any stage runs (the whole demo runs in the docs' CI
job and in tests/test_docker.py's pipeline; here only what is cheap)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import cli
from pipeline.demo import DemoConfig
from pipeline.errors import NowcastError


@pytest.mark.parametrize(
    "args", [["--workers", "0"], ["--steps", "-5"], ["--steps", "0"], ["--workers", "3"]]
)
def test_bad_demo_options_fail_before_synth_and_ingest(tmp_path, args):
    """Bad demo options (`--workers 0`, `--steps -5`) are refused before synth and ingest run."""
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(cli.app, ["demo", "--workdir", str(workdir), *args])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output, (
        result.output
    )
    assert not workdir.exists()


def test_demo_config_types_are_checked():
    assert DemoConfig(steps="20").steps == 20
    for kw, message in (
        (dict(days=0), "--days must be >= 1"),
        (dict(size_px=2.5), "size_px must be a whole number"),
        (dict(model_name="a b"), "is not a safe name"),
        (dict(max_eval_clips=0), "--max-eval-clips must be >= 1"),
    ):
        with pytest.raises(NowcastError, match=message):
            DemoConfig(**kw)


def test_demo_summary_ends_with_the_tracking_export_and_working_next_commands(tmp_path):
    """The demo's closing lines give the `export MLFLOW_TRACKING_URI=...` line for its registry and next
    commands that the CLI accepts (each parses: command and options exist)."""
    import shlex
    from types import SimpleNamespace

    from pipeline.demo import _summary

    store = tmp_path / "my demo" / "store.zarr"
    uri = f"sqlite:///{tmp_path / 'my demo' / 'mlflow.db'}"
    trained = SimpleNamespace(promoted=True, checkpoint_path="ck")
    compared = SimpleNamespace(table="TABLE", results=[])
    text = _summary(
        tmp_path, "nowcast-tiny", store, "models:/nowcast-tiny/1", trained, "g.gif", compared, uri, 60, "r"
    )
    lines = [line.strip() for line in text.splitlines()]
    assert f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}" in lines
    commands = [shlex.split(line) for line in lines if line.startswith("nowcast ")]
    assert {c[1] for c in commands} == {"info", "evaluate", "predict"}
    for command in commands:
        assert str(store) in command and all("@champion" in c for c in command if c.startswith("models:/"))
        result = CliRunner().invoke(cli.app, [*command[1:], "--help"])
        assert result.exit_code == 0, result.output
