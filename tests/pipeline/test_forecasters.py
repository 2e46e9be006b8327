"""pipeline.forecasters: baselines, checkpoints and URIs -> one Forecaster; the frame-size check."""

from __future__ import annotations

import pytest
import torch

from pipeline import checkpoints
from pipeline.errors import NowcastError
from pipeline.forecasters import BASELINES, absolute_uri, baseline_name, load_forecaster


def tiny_model(seed: int = 0):
    from trajgru.model import build_model

    torch.manual_seed(seed)
    return build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=3).eval()


def test_baseline_forecasters():
    x = torch.rand(5, 2, 1, 16, 16)
    f = load_forecaster("persistence")
    assert (f.in_len, f.out_len, f.run_id, f.model_config) == (5, 20, None, None)
    y = f(x)
    assert y.shape == (20, 2, 1, 16, 16)
    assert torch.equal(y, x[-1:].expand(20, -1, -1, -1, -1))
    g = load_forecaster("optical-flow", out_len=4)
    assert g(x).shape == (4, 2, 1, 16, 16)
    with pytest.raises(NowcastError, match="needs 5 input frames"):
        f(x[:3])


@pytest.mark.parametrize("uri", ["nonsense", "models:/x", "/no/such/checkpoint"])
def test_unknown_uri_is_a_nowcast_error(uri):
    with pytest.raises(NowcastError, match="models:/NAME@ALIAS"):
        load_forecaster(uri)


def test_checkpoint_dir_round_trip(tmp_path):
    """A checkpoint directory or a file in it loads; a directory that is neither a checkpoint nor a Ray
    Train run directory is an error (test_train loads a run directory: its latest checkpoint)."""
    model = tiny_model()
    checkpoints.save_model_files(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / checkpoints.META_FILE).write_text('{"mlflow_run_id": "abc"}')
    x = torch.rand(2, 3, 1, 16, 16)
    with pytest.raises(NowcastError, match="no model_config.json"):
        load_forecaster(str(tmp_path))
    for uri in (tmp_path / "ckpt", tmp_path / "ckpt" / checkpoints.MODEL_STATE_FILE):
        f = load_forecaster(str(uri))
        assert f.run_id == "abc" and f.name == str(tmp_path / "ckpt") and f.frame_size == (16, 16)
        assert (f.in_len, f.out_len) == (2, 3)
        assert f.model_config == model.config.to_dict()
        with torch.no_grad():
            assert torch.allclose(f(x), model(x))


def test_baseline_names_and_absolute_uris(tmp_path, monkeypatch):
    assert BASELINES == ("persistence", "optical-flow", "extrapolation", "sprog", "steps")
    assert baseline_name("optical_flow") == baseline_name(" optical-flow ") == "optical-flow"
    assert (
        baseline_name("models:/x@champion") is None and load_forecaster("optical_flow").name == "optical-flow"
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    assert absolute_uri("ck") == str(tmp_path.resolve() / "ck")
    for uri in ("persistence", "steps:members=3", "models:/a/1", "http://x/y", "missing-dir"):
        assert absolute_uri(uri) == uri


def test_frame_size_check(tmp_path):
    f = load_forecaster("persistence")
    assert f.frame_size is None
    f.check_frame_size((7, 9), "anything")  # baselines take any size
    checkpoints.save_model_files(tiny_model(), tmp_path)
    g = load_forecaster(str(tmp_path))
    g.check_frame_size((16, 16), "the store s")
    with pytest.raises(NowcastError, match="16x16 frames but the store s holds 32x32"):
        g.check_frame_size((32, 32), "the store s")


def test_registry_model_without_a_tracking_store_is_an_error_and_creates_none(tmp_path, monkeypatch):
    """`models:/NAME@alias` with no --tracking-uri, no MLFLOW_TRACKING_URI and no ./mlflow.db: a one-line
    error saying how to point at a registry, and no ./mlflow.db is created (reading never creates one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(NowcastError, match=r"no tracking store is configured .*export MLFLOW_TRACKING_URI"):
        load_forecaster("models:/x@champion")
    assert list(tmp_path.iterdir()) == []
