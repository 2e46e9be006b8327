"""pipeline.checkpoints: the checkpoint format round trip, weights-only loading, RNG state."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch

from pipeline import checkpoints
from pipeline.errors import NowcastError
from trajgru.model import build_model


def _model_and_optimizer():
    torch.manual_seed(0)
    model = build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.7 ** (s // 2))
    x = torch.rand(4, 2, 1, 16, 16)
    model(x[:2]).square().mean().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model, optimizer, scheduler = _model_and_optimizer()
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": 7,
        "rng": checkpoints.rng_state(),
    }
    meta = {
        "step": 7,
        "segments": [[1, 7]],
        checkpoints.RUN_ID_KEY: "run-1",
        "val_scores": None,
        "champion_score": 0.25,
    }
    checkpoints.save(tmp_path, model, train_state, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            checkpoints.MODEL_CONFIG_FILE,
            checkpoints.MODEL_STATE_FILE,
            checkpoints.TRAIN_STATE_FILE,
            checkpoints.META_FILE,
        ]
    )
    assert checkpoints.read_meta(tmp_path) == meta and checkpoints.run_id(tmp_path) == "run-1"
    state = checkpoints.load_train_state(tmp_path)  # torch.load(weights_only=True) inside
    assert state["step"] == 7 and state["scheduler"]["last_epoch"] == 1
    fresh = build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=2)
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt2.load_state_dict(state["optimizer"])
    loaded, config = checkpoints.load_model_files(tmp_path)
    assert config == model.config.to_dict() and not loaded.training
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert checkpoints.find(tmp_path / checkpoints.MODEL_STATE_FILE) == tmp_path


def test_best_weights_are_saved_beside_and_serve_the_checkpoint(tmp_path):
    model, optimizer, scheduler = _model_and_optimizer()
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": 9,
        "rng": checkpoints.rng_state(),
    }
    best_weights = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    best_meta = {"step": 6, "champion_score": 0.3, "val_scores": None, checkpoints.RUN_ID_KEY: "run-1"}
    checkpoints.save(tmp_path, model, train_state, {"step": 9}, best=(best_weights, best_meta))
    weights, meta = checkpoints.load_best(tmp_path)
    assert meta == best_meta and all(torch.equal(weights[k], best_weights[k]) for k in best_weights)
    # evaluate / predict / the registry serve the best weights; training resumes from the last ones
    assert checkpoints.find(tmp_path) == tmp_path / checkpoints.BEST_DIR
    assert checkpoints.find(tmp_path / checkpoints.MODEL_STATE_FILE) == tmp_path / checkpoints.BEST_DIR
    served, _ = checkpoints.load_model_files(checkpoints.served_model_dir(tmp_path))
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in served.state_dict().values())
    last, _, _ = checkpoints.load(tmp_path)
    assert all(torch.equal(last[k], v) for k, v in model.state_dict().items())
    assert checkpoints.run_id(checkpoints.find(tmp_path)) == "run-1"
    # a checkpoint without best/ serves itself
    checkpoints.save(tmp_path / "plain", model, train_state, {"step": 9})
    assert checkpoints.load_best(tmp_path / "plain") is None
    assert checkpoints.served_model_dir(tmp_path / "plain") == tmp_path / "plain"


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    """Loading never unpickles code: a train_state.pt holding an arbitrary object fails to load."""
    torch.save({"step": 1, "evil": PurePosixPath("any/class")}, tmp_path / checkpoints.TRAIN_STATE_FILE)
    with pytest.raises(NowcastError, match="not loaded") as err:
        checkpoints.load_train_state(tmp_path)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_rng_state_restores_every_generator():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = checkpoints.rng_state()
    json.dumps(state["python"])  # plain values
    first = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(2).tolist())
    checkpoints.set_rng_state(state)
    again = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(2).tolist())
    assert first == again


def test_find_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(NowcastError, match="neither a checkpoint"):
        checkpoints.find(tmp_path)
    assert checkpoints.run_id(tmp_path) is None


# ---------------------------------------------------------------- no unpickling; damaged checkpoints
class _RunsCode:
    """A pickle payload that would run a command when unpickled (it touches a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _checkpoint(path, step=3):
    model, optimizer, scheduler = _model_and_optimizer()
    checkpoints.save(
        path,
        model,
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": checkpoints.rng_state(),
        },
        {
            "step": step,
            "segments": [[1, step]],
            checkpoints.RUN_ID_KEY: None,
            "val_scores": None,
            "champion_score": None,
        },
    )
    return path


@pytest.mark.parametrize("name", [checkpoints.TRAIN_STATE_FILE, checkpoints.MODEL_STATE_FILE])
def test_a_checkpoint_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path, name):
    """A crafted train_state.pt / model_state.pt (a pickle whose loading calls os.system)
    is refused by every reader (resume, forecasters, the CLI) with a one-line error; the command never runs."""
    from typer.testing import CliRunner

    import cli
    from pipeline.forecasters import load_forecaster

    marker = tmp_path / "code-ran"
    ckpt = _checkpoint(tmp_path / "ckpt")
    torch.save({"step": 3, "payload": _RunsCode(marker)}, ckpt / name)
    with pytest.raises(NowcastError, match="not loaded"):
        checkpoints.load(ckpt)
    assert checkpoints.problem(ckpt) is not None
    if name == checkpoints.MODEL_STATE_FILE:
        with pytest.raises(NowcastError, match="not loaded"):
            load_forecaster(str(ckpt))
        result = CliRunner().invoke(
            cli.app,
            [
                "predict",
                "--model",
                str(ckpt),
                "--input",
                str(ckpt / name),
                "--out-dir",
                str(tmp_path / "out"),
            ],
        )
        assert result.exit_code == 1 and "not loaded" in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_problem_names_what_is_damaged(tmp_path):
    ckpt = _checkpoint(tmp_path / "ok")
    assert checkpoints.problem(ckpt) is None
    data = (ckpt / checkpoints.MODEL_STATE_FILE).read_bytes()
    (ckpt / checkpoints.MODEL_STATE_FILE).write_bytes(data[: len(data) // 2])  # truncated
    assert "RuntimeError" in checkpoints.problem(ckpt)
    ckpt = _checkpoint(tmp_path / "no-meta")
    (ckpt / checkpoints.META_FILE).unlink()
    assert "FileNotFoundError" in checkpoints.problem(ckpt)
    ckpt = _checkpoint(tmp_path / "wrong-model")
    (ckpt / checkpoints.MODEL_CONFIG_FILE).write_text(
        json.dumps(  # weights of another model
            build_model("tiny", "convlstm", height=16, width=16, in_len=2, out_len=2).config.to_dict()
        )
    )
    assert "state_dict" in checkpoints.problem(ckpt)
