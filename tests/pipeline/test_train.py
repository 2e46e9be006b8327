"""pipeline.train: pure helpers (fast) and Ray Train integration runs (slow, one shared cluster).

The integration runs share one small synthetic store (32x32, in 3 -> out 3 frames), one local
Ray cluster and one real ``mlflow server``. The uninterrupted 2-worker run is the reference:
the interrupted-and-resumed run and the crashed-and-recovered run must end with bit-identical
weights, which they can only do if every step 1..N was applied exactly once, in order, with
the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import train as tr
from pipeline.checkpoints import MODEL_STATE_FILE
from pipeline.errors import NowcastError
from pipeline.tracking import BEST_METRIC, CHAMPION_METRIC, RUN_NAME_TAG
from pipeline.train import driver, worker
from tests.pipeline._ray_fixtures import local_ray, make_store, mlflow_server
from tests.pipeline._train_faults import crash_once_at_step_5


# ====================================================================== pure helpers
def test_lr_factor_step_schedule_matches_hand_table():
    # HKO-7: 1e-4, x0.7 every 20k steps, floor 1e-6
    step_lr = dict(
        schedule="step",
        total_steps=100_000,
        warmup_steps=0,
        base_lr=1e-4,
        min_lr=1e-6,
        decay=0.7,
        decay_every=20_000,
    )
    table = {0: 1.0, 19_999: 1.0, 20_000: 0.7, 40_000: 0.49, 99_999: 0.7**4, 100_000: 0.7**5}
    for step, want in table.items():
        assert tr.lr_factor(step, **step_lr) == pytest.approx(want)
    # 0.7**13 = 0.0097 < 1e-6/1e-4 = 0.01: clamped at the floor
    assert tr.lr_factor(13 * 20_000, **step_lr) == pytest.approx(0.01)


def test_lr_factor_warmup_then_cosine_matches_hand_table():
    # warm-up 10 steps, cosine over the 100 - 10 = 90 that follow, from 1 down to 1e-5 / 1e-3 = 0.01
    cos = dict(schedule="cosine", total_steps=100, warmup_steps=10, base_lr=1e-3, min_lr=1e-5)
    table = {
        0: 0.1,
        4: 0.5,
        9: 1.0,  # (s + 1) / 10
        10: 1.0,  # start of the decay
        55: 0.01 + 0.99 * 0.5,  # half way: cos(pi/2) = 0
        100: 0.01,
        150: 0.01,
    }  # the floor at the end and beyond
    for step, want in table.items():
        assert tr.lr_factor(step, **cos) == pytest.approx(want), step
    # slow reference over every step: monotone non-increasing after the warm-up
    after = [tr.lr_factor(s, **cos) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_recipes_fill_unset_fields_and_options_win(tmp_path):
    cfg = tr.TrainConfig(store=str(tmp_path / "s"), preset="tiny", tracking_uri="sqlite:///x.db").resolved()
    assert cfg.recipe == "tiny" and (cfg.batch_size, cfg.lr, cfg.lr_schedule, cfg.augment) == (
        16,
        1e-3,
        "cosine",
        True,
    )
    paper = tr.TrainConfig(
        store="s", preset="tiny", recipe="hko7-paper", steps=10, tracking_uri="sqlite:///x.db"
    ).resolved()
    assert (paper.steps, paper.lr, paper.beta1, paper.lr_schedule, paper.augment) == (
        10,
        1e-4,
        0.5,
        "step",
        False,
    )
    with pytest.raises(NowcastError, match="unknown recipe"):
        tr.TrainConfig(store="s", recipe="fast")
    with pytest.raises(NowcastError, match="lr_schedule"):
        tr.TrainConfig(store="s", lr_schedule="linear")


def test_every_preset_trains_with_a_recipe_given_by_data():
    """Each model preset maps to an existing recipe (no recipe found by matching the preset's name)."""
    from trajgru.model import PRESETS

    assert set(tr.PRESET_RECIPES) == set(PRESETS) and set(tr.PRESET_RECIPES.values()) <= set(tr.RECIPES)
    for preset, recipe in (("tiny", "tiny"), ("hko7", "hko7-paper"), ("mnist++", "hko7-paper")):
        cfg = tr.TrainConfig(store="s", preset=preset, tracking_uri="sqlite:///x.db").resolved()
        assert cfg.recipe == recipe and cfg.steps == tr.RECIPES[recipe]["steps"]
    assert cfg.run_name.startswith("mnist-trajgru-")  # a safe default run name for mnist++


def test_validation_starts_are_evenly_spaced_over_the_split():
    class FakeStore:
        def clip_starts(self, split, protocol):
            assert (split, protocol) == ("valid", "sequent")
            return np.arange(100, dtype=np.int64) * 1800

    assert len(tr.validation_starts(FakeStore(), None)) == 100
    picked = tr.validation_starts(FakeStore(), 5)
    assert picked.tolist() == [0, 25 * 1800, 50 * 1800, 74 * 1800, 99 * 1800]  # round(linspace(0, 99, 5))


def test_train_state_keeps_the_best_weights_and_counts_stale_validations():
    from trajgru.model import build_model

    model = build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=2)
    state = tr.TrainState()
    state.record_validation(model, 10, {"a": 1}, float("nan"))  # NaN never counts as best
    assert state.best_step is None and state.stale_validations == 1
    state.record_validation(model, 20, {"a": 2}, 0.30)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training moves on
    state.record_validation(model, 30, {"a": 3}, 0.25)  # worse: best stays at step 20
    state.record_validation(model, 40, {"a": 4}, 0.30)  # a tie is not better
    assert (state.best_step, state.best_score, state.best_val_scores) == (20, 0.30, {"a": 2})
    assert state.stale_validations == 2 and (state.val_scores, state.champion_score) == ({"a": 4}, 0.30)
    assert all(torch.equal(state.best_weights[k], kept[k]) for k in kept)
    # the checkpoint payload carries them, and a restore gives them back
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    _, meta, best = tr.checkpoint_payload(opt, sched, state, "run-1")
    back = tr.TrainState.restore(json.loads(json.dumps(meta)), (best[0], json.loads(json.dumps(best[1]))))
    assert (back.best_step, back.best_score, back.stale_validations) == (20, 0.30, 2)
    assert best[1]["mlflow_run_id"] == "run-1"


def test_batch_indices_cover_each_item_once_per_epoch_and_are_pure():
    n, batch = 7, 3
    stream = np.concatenate([tr.batch_indices(s, batch, n, seed=5, rank=1) for s in range(1, 15)])
    # 14 steps * 3 = 42 samples = 6 epochs of 7 items: each epoch is a permutation
    for e in range(6):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    # slow reference: the k-th sample is perm_{k // n}[k % n]
    ref = [np.random.default_rng([5, 1, k // n]).permutation(n)[k % n] for k in range(42)]
    assert stream.tolist() == ref
    # different ranks / seeds give different orders; the same arguments the same batch
    assert not np.array_equal(
        stream[:n], np.concatenate([tr.batch_indices(s, batch, n, seed=5, rank=0) for s in range(1, 15)])[:n]
    )
    assert np.array_equal(tr.batch_indices(9, batch, n, 5, 1), tr.batch_indices(9, batch, n, 5, 1))


def test_step_batch_sampler_resumed_equals_tail_of_full():
    full = list(tr.StepBatchSampler(10, 2, seed=1, rank=0, first_step=1, last_step=12))
    resumed = list(tr.StepBatchSampler(10, 2, seed=1, rank=0, first_step=8, last_step=12))
    assert len(full) == 12 and resumed == full[7:]
    assert len(tr.StepBatchSampler(10, 2, 1, 0, first_step=13, last_step=12)) == 0


def test_segments_record_and_expand():
    seg: list = []
    for s in (1, 2, 3):
        tr.add_step(seg, s, new_attempt=s == 1)
    tr.add_step(seg, 4, new_attempt=True)
    tr.add_step(seg, 5, new_attempt=False)
    assert seg == [[1, 3], [4, 5]]
    assert tr.expand_segments(seg) == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="does not follow"):
        tr.add_step(seg, 7, new_attempt=False)


def test_train_config_hko7_recipe_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tr.TrainConfig(store="s.zarr", preset="hko7", workers=4).resolved()
    assert (cfg.batch_size, cfg.lr, cfg.beta1, cfg.clip_norm) == (4, 1e-4, 0.5, 50.0)
    assert (cfg.lr_decay, cfg.lr_decay_every, cfg.min_lr, cfg.steps) == (0.7, 20_000, 1e-6, 100_000)
    assert cfg.store == str(tmp_path.resolve() / "s.zarr")
    assert cfg.storage_path == str(tmp_path.resolve() / "ray_results")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert cfg.ray_address is None and cfg.run_name.startswith("hko7-trajgru-")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert tr.TrainConfig(store="s", steps=3, lr=0.5).resolved().ray_address == "head:6379"
    with pytest.raises(NowcastError, match="multiple of --workers"):
        tr.TrainConfig(store="s", workers=3, batch_size=4).resolved()
    with pytest.raises(NowcastError, match="unknown preset"):
        tr.TrainConfig(store="s", preset="big").resolved()


def test_load_config_file_yaml_json_and_unknown_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.0002\nbatch-size: 8\nsteps: 10\n")
    assert tr.load_config_file(tmp_path / "a.yaml") == {"lr": 0.0002, "batch_size": 8, "steps": 10}
    (tmp_path / "b.json").write_text(json.dumps({"clip_norm": 10}))
    assert tr.load_config_file(tmp_path / "b.json") == {"clip_norm": 10}
    (tmp_path / "c.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(NowcastError, match="unknown option"):
        tr.load_config_file(tmp_path / "c.yaml")
    with pytest.raises(NowcastError, match="does not exist"):
        tr.load_config_file(tmp_path / "none.yaml")


def _worker_result(status: str, message: str = "") -> tr.WorkerResult:
    return tr.WorkerResult(status, 7, [[1, 7]], None, None, None, None, False, message)


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_worker_trains_with_the_plain_step_on_a_cpu_and_says_why(fast_path):
    """Without a GPU the worker's step is the plain TrainStep with the run's loss weights and clip norm,
    and rank 0 says why it is not a CUDA graph."""
    from types import SimpleNamespace

    from trajgru.model import build_model
    from trajgru.step import TrainStep

    said = []
    cfg = tr.TrainConfig(store="s", clip_norm=3.0, mse_weight=0.0, fast_path=fast_path)
    ctx = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), autocast_device=None, world=1, say=said.append)
    model = build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=2)
    batch = (torch.rand(2, 1, 1, 16, 16), torch.rand(2, 1, 1, 16, 16), torch.ones(2, 1, 1, 16, 16))
    step = worker.make_train_step(ctx, model, torch.optim.Adam(model.parameters()), batch)
    assert isinstance(step, TrainStep) and not step.graphed
    assert (step.clip_norm, step.loss_fn.mse_weight, step.loss_fn.mae_weight) == (3.0, 0.0, 1.0)
    assert said == ["training step: plain (no GPU)"]


def test_non_finite_summary_becomes_a_nowcast_error(tmp_path):
    """The message names the last good checkpoint once, with its step, and never contradicts itself
    ("step 0 is kept ... none")."""
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({"step": 5}))
    stopped = _worker_result("non_finite", "non-finite loss nan / grad norm nan at step 7")
    with pytest.raises(
        NowcastError, match=r"step 7; the last good checkpoint, .*ck \(step 5\), is kept.*Lower --lr"
    ):
        tr.raise_if_stopped(stopped, str(tmp_path / "ck"), "r")
    with pytest.raises(NowcastError, match="there is no checkpoint yet") as exc:
        tr.raise_if_stopped(stopped, None, "r")
    assert "step 0" not in str(exc.value)
    with pytest.raises(NowcastError, match="no checkpoint"):
        tr.raise_if_stopped(_worker_result("ok"), None, "r")
    tr.raise_if_stopped(_worker_result("ok"), str(tmp_path / "ck"), "r")  # fine: no exception


def test_validation_metrics_average_over_lead_times():
    nan = float("nan")
    result = {
        "thresholds": [0.5, 5.0],
        "csi": [[0.5, 0.2], [0.3, nan], [0.1, 0.4]],
        "hss": [[0.6, 0.1], [0.4, 0.3], [0.2, 0.2]],
        "b_mse": [1.0, 2.0, 6.0],
        "b_mae": [3.0, 3.0, 3.0],
    }
    m = tr.validation_metrics(result)
    assert m["valid_csi_0.5mm_h"] == pytest.approx(0.3)  # the names of `nowcast evaluate --split valid`
    assert m["valid_csi_5mm_h"] == pytest.approx(0.3)  # NaN lead time skipped
    assert m["valid_hss_5mm_h"] == pytest.approx(0.2)
    assert m["valid_b_mse"] == pytest.approx(3.0) and m["valid_b_mae"] == pytest.approx(3.0)
    assert m[CHAMPION_METRIC] == pytest.approx(0.3)


# ====================================================================== Ray integration
STEPS = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("train_store"))


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray():
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One SQLite tracking file for the module's runs (creating the tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _cfg(store, tmp: Path, run_name: str, **kw) -> tr.TrainConfig:
    assert "tracking_uri" in kw, "never let a test default to ./mlflow.db"
    base = dict(
        store=str(store),
        preset="tiny",
        cell="trajgru",
        workers=2,
        steps=STEPS,
        batch_size=2,
        checkpoint_every=3,
        val_every=3,
        val_clips=4,
        log_every=1,
        in_len=3,
        out_len=3,
        run_name=run_name,
        storage_path=str(tmp / "ray"),
        seed=0,
        model_format="pickle",
        system_metrics=False,
        gif_clips=1,
    )
    base.update(kw)
    return tr.TrainConfig(**base)


def _weights(checkpoint_path) -> dict:
    return torch.load(Path(checkpoint_path) / MODEL_STATE_FILE, weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(store, ray_cluster, server, tmp_path_factory):
    """The uninterrupted 2-worker run, tracked on the real MLflow server, registered."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _cfg(
        store,
        tmp,
        "reference",
        tracking_uri=server,
        register_as="nowcast-test",
        system_metrics=True,
        system_metrics_interval_s=1.0,
    )
    return cfg, tr.train(cfg)


@pytest.mark.slow
def test_two_worker_run_logs_to_mlflow_server_and_registers(reference_run, server):
    import mlflow

    cfg, res = reference_run
    assert res.final_step == STEPS and res.segments == [[1, STEPS]]
    assert tr.expand_segments(res.segments) == list(range(1, STEPS + 1))
    assert res.registered_version == 1 and res.promoted
    client = mlflow.MlflowClient(server)
    run = client.get_run(res.run_id)
    params = run.data.params
    assert params["lr"] == str(1e-3) and params["batch_size"] == "2" and params["workers"] == "2"
    assert params["model.height"] == "32" and params["model.out_len"] == "3"
    assert run.data.tags["code_version"] and run.data.tags[RUN_NAME_TAG] == "reference"
    assert [m.step for m in client.get_metric_history(res.run_id, "loss")] == list(range(1, STEPS + 1))
    for key in (
        "lr",
        "grad_norm",
        "samples_per_s",
        "valid_csi_5mm_h",
        "valid_hss_0.5mm_h",
        "valid_b_mse",
        "valid_b_mae",
        CHAMPION_METRIC,
    ):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(res.run_id, CHAMPION_METRIC)] == [3, 6]
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    # the champion score logged is the one computed from the returned validation scores
    from trajgru.metrics import champion_score

    assert run.data.metrics[CHAMPION_METRIC] == pytest.approx(champion_score(res.val_scores), nan_ok=True)
    files = {f.path for f in client.list_artifacts(res.run_id)}
    assert {"store_fingerprint.json", "model_config.json", "validation"} <= files
    step6 = {Path(f.path).name for f in client.list_artifacts(res.run_id, "validation/step_6")}
    assert "skill_vs_lead_step6.png" in step6 and "forecast_clip0_step6.gif" in step6
    # registered version: the champion, loadable, equal to the final checkpoint
    assert client.get_model_version_by_alias("nowcast-test", "champion").version == "1"
    from pipeline.forecasters import load_forecaster

    f = load_forecaster("models:/nowcast-test@champion", tracking_uri=server)
    g = load_forecaster(res.checkpoint_path)
    x = torch.rand(3, 2, 1, 32, 32)
    assert f.run_id == res.run_id and torch.allclose(f(x), g(x))
    # a Ray Train run directory loads its latest checkpoint (ray.train.Result.from_path)
    run_dir = load_forecaster(str(Path(cfg.storage_path) / cfg.run_name))
    assert run_dir.name == str(Path(res.checkpoint_path) / "best") and run_dir.run_id == res.run_id
    assert client.get_run(res.run_id).info.status == "FINISHED"
    # the registered weights are the best validated ones, and MLflow says which step they come from
    best = max(
        (3, 6), key=lambda s: client.get_metric_history(res.run_id, CHAMPION_METRIC)[(s // 3) - 1].value
    )
    assert res.best_step == best and client.get_run(res.run_id).data.tags["best_step"] == str(best)
    version = client.get_model_version("nowcast-test", "1")
    assert version.tags["best_step"] == str(best) and float(version.tags[BEST_METRIC]) == pytest.approx(
        [m.value for m in client.get_metric_history(res.run_id, CHAMPION_METRIC) if m.step == best][0]
    )
    assert _same_weights(f.module.state_dict(), _weights(Path(res.checkpoint_path) / "best"))


@pytest.mark.slow
def test_early_stop_registers_the_best_and_does_not_resume(store, ray_cluster, sqlite_uri, tmp_path):
    cfg = _cfg(
        store,
        tmp_path,
        "early",
        tracking_uri=sqlite_uri,
        steps=40,
        val_every=1,
        checkpoint_every=40,
        early_stop_patience=2,
        register_as="nowcast-early",
    )
    res = tr.train(cfg)
    assert res.stopped_early and res.final_step < 40
    if res.best_step is not None:  # two validations after the best one, none better
        assert res.final_step == res.best_step + 2
    again = tr.train(cfg)  # the same run name: nothing more to train
    assert again.final_step == res.final_step and again.stopped_early


@pytest.mark.slow
def test_stop_and_resume_continues_exactly(
    store, ray_cluster, reference_run, sqlite_uri, tmp_path, monkeypatch
):
    """A run stopped by a worker crash and resumed by a second `train` ends with the weights of the
    uninterrupted run; one MLflow run, every step logged once; finding the resume point in a fresh
    process (as `nowcast train` does, before Ray starts) prints none of Ray's INFO lines."""
    import mlflow

    # the last worker dies at step 5 and no restart is allowed: the run stops after the
    # step-3 checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(driver, "train_loop_per_worker", crash_once_at_step_5)
        with pytest.raises(NowcastError, match="Re-run with the same --run-name resume"):
            tr.train(_cfg(store, tmp_path, "resume", max_failures=0, tracking_uri=sqlite_uri))
    # the same run name resumes from step 3 and finishes
    res = tr.train(_cfg(store, tmp_path, "resume", tracking_uri=sqlite_uri))
    assert res.final_step == STEPS
    assert res.segments == [[1, 3], [4, STEPS]]
    assert tr.expand_segments(res.segments) == list(range(1, STEPS + 1))  # none twice, none skipped
    assert _same_weights(_weights(res.checkpoint_path), _weights(reference_run[1].checkpoint_path))
    # one MLflow run across both attempts, whose step metrics reach the last step
    client = mlflow.MlflowClient(sqlite_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("nowcast").experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = 'resume'",
    )
    assert [r.info.run_id for r in runs] == [res.run_id]
    assert client.get_run(res.run_id).info.status == "FINISHED"
    # artifacts live next to the SQLite file (absolute), not in a worker's current directory
    db_dir = Path(sqlite_uri[len("sqlite:///") :]).parent
    assert client.get_experiment_by_name("nowcast").artifact_location.startswith(db_dir.as_uri())
    assert {f.path for f in client.list_artifacts(res.run_id)} >= {"store_fingerprint.json", "validation"}
    # every step logged exactly once, although steps 4 (logged, then lost with the crash) was trained twice
    assert [m.step for m in client.get_metric_history(res.run_id, "loss")] == list(range(1, STEPS + 1))
    code = (
        "from pipeline.train import TrainConfig, driver\n"
        f"cfg = TrainConfig(store='s', run_name='resume', storage_path={str(tmp_path / 'ray')!r})\n"
        "print('resume point:', driver.resume_point(cfg))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert fresh.stdout == "resume point: None\n" and "run snapshot" not in fresh.stderr, fresh.stderr


@pytest.mark.slow
def test_worker_crash_is_recovered_from_last_checkpoint(
    store, ray_cluster, reference_run, sqlite_uri, tmp_path, monkeypatch
):
    """A worker that dies at step 5 is restarted from the step-3 checkpoint within the same `train`; the
    weights equal the uninterrupted run's and every step is logged once."""
    monkeypatch.setattr(driver, "train_loop_per_worker", crash_once_at_step_5)
    res = tr.train(_cfg(store, tmp_path, "crash", max_failures=1, tracking_uri=sqlite_uri))
    assert (tmp_path / "ray" / "crash" / ".failed_at_5").exists()  # the crash did happen
    assert res.final_step == STEPS
    assert res.segments == [[1, 3], [4, STEPS]]  # restarted after step 3
    import mlflow

    history = mlflow.MlflowClient(sqlite_uri).get_metric_history(res.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # step 4 retrained, logged once
    assert _same_weights(_weights(res.checkpoint_path), _weights(reference_run[1].checkpoint_path))


# ============================================================ hardening: bad input, resume, recovery
class _RunsCode:
    """A pickle payload that would run a command when unpickled (it touches a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _store_with_splits(source_store: Path, out: Path, **splits) -> Path:
    """The archive of ``source_store`` ingested again with other day ranges per split (None = no days)."""
    from pipeline.ingest import IngestConfig, ingest

    nowhere = (np.datetime64("2030-01-01"), np.datetime64("2030-01-02"))
    specs = {
        name: nowhere if days is None else tuple(np.datetime64(d) if d else None for d in days)
        for name, days in splits.items()
    }
    ingest(
        IngestConfig(archive=source_store.parent / "archive", store=out, workers=0, splits=specs),
        progress=False,
    )
    return out


def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(driver, "connect_ray", refuse)


def test_config_values_are_typed_and_checked_before_anything_starts():
    """Config values are coerced to their types (YAML's "1e-3" -> 0.001) or refused with a message naming
    the option, before anything starts."""
    cfg = tr.TrainConfig(store="s", lr="1e-3", steps="10", beta1=0.5)  # YAML reads 1e-3 as text
    assert cfg.lr == 0.001 and cfg.steps == 10
    bad = [
        dict(steps=2.5),
        dict(steps="many"),
        dict(lr="fast"),
        dict(workers=True),
        dict(val_clips=0),
        dict(beta1=1.5),
        dict(clip_norm=0),
        dict(clip_norm=-1),
        dict(gif_clips=-1),
        dict(max_failures=-1),
        dict(use_gpu="yes"),
        dict(run_name="../../x"),
        dict(run_name="a'b"),
        dict(register_as="a/b"),
        dict(model_format="onnx"),
        dict(mse_weight=0, mae_weight=0),
    ]
    for kw in bad:
        with pytest.raises(NowcastError, match=next(iter(kw)).replace("_", "[-_]")) as exc:
            tr.TrainConfig(store="s", **kw)
        assert exc.value.exit_code == 2, kw


def test_absurd_step_counts_are_refused_with_the_bound():
    """`steps: 1e100` (a float that is a whole number) and ints beyond any run are usage errors that say
    the bound, not a run that trains."""
    with pytest.raises(NowcastError, match=r"steps must be a whole number of at most 9007199254740992"):
        tr.TrainConfig(store="s", steps=1e100)
    with pytest.raises(NowcastError, match=r"steps must be at most 1,000,000,000, got 10,000,000,000"):
        tr.TrainConfig(store="s", steps=10**10)
    with pytest.raises(NowcastError, match=r"val_every must be at most 1,000,000,000"):
        tr.TrainConfig(store="s", val_every="1e12")
    assert tr.TrainConfig(store="s", steps="1e6").steps == 1_000_000


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("bad.yaml", "steps: 10\nlr: [1e-3\nbatch_size: 8\n", r"line 3, column 11"),
        ("bad.yaml", "steps: 10\n  lr: 1\n", r"line 2, column 5"),
        ("bad.json", '{"steps": 10,\n "lr": }', r"line 2, column 8"),
    ],
)
def test_a_broken_config_file_is_one_line_with_its_position(tmp_path, name, text, where):
    """The parser's complaint comes as one line naming the file, the problem, its line and column."""
    (tmp_path / name).write_text(text)
    with pytest.raises(NowcastError, match=rf"cannot parse config file .*{name}: .* at {where}$") as exc:
        tr.load_config_file(tmp_path / name)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_a_second_train_of_the_same_run_is_refused_with_the_holders_pid(store, tmp_path, monkeypatch):
    """While one `nowcast train` holds a run (its lock in the run's folder), another of the same run name
    and storage path stops at once, before Ray, naming the holder's pid; once the holder ends it is free."""
    _no_ray(monkeypatch)
    cfg = _cfg(store, tmp_path, "busy", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    lock = tmp_path / "ray" / "busy" / driver.RUN_LOCK
    lock.parent.mkdir(parents=True)
    holder_code = (
        "import sys\nfrom pathlib import Path\nfrom pipeline.files import exclusive_lock\n"
        f"with exclusive_lock(Path({str(lock)!r}), 'busy'):\n"
        "    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            NowcastError, match=rf"another `nowcast train` \(pid {holder.pid}\) is training run 'busy'"
        ):
            tr.train(cfg)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / "m.db").exists()
    with pytest.raises(AssertionError, match="Ray was started"):  # free again: it goes on to start Ray
        tr.train(cfg)


def test_cli_config_file_keys_of_cli_options_and_bad_values(tmp_path, monkeypatch):
    """`workers`, `store`, `preset`, `tracking_uri` in --config are taken; `steps: 2.5` fails before Ray
    starts. The command line wins over the file, the file over the defaults."""
    from typer.testing import CliRunner

    import cli

    seen = {}
    monkeypatch.setattr(
        tr,
        "train",
        lambda cfg: seen.setdefault("cfg", cfg) and (_ for _ in ()).throw(NowcastError("stop here")),
    )
    (tmp_path / "c.yaml").write_text(
        "workers: 4\nstore: other.zarr\npreset: hko7\ntracking_uri: sqlite:///x.db\n"
        "lr: 1e-3\nsteps: 10\nbatch_size: 8\n"
    )
    result = CliRunner().invoke(
        cli.app, ["train", "s.zarr", "--config", str(tmp_path / "c.yaml"), "--steps", "20"]
    )
    assert "Traceback" not in result.output and "stop here" in result.output, result.output
    cfg = seen["cfg"]
    assert (cfg.store, cfg.workers, cfg.preset, cfg.tracking_uri, cfg.lr, cfg.steps) == (
        "s.zarr",
        4,
        "hko7",
        "sqlite:///x.db",
        0.001,
        20,
    )
    for text in ("steps: 2.5\n", "val_clips: 0\n", "beta1: 2\n", "clip_norm: -1\n", "lr: fast\n"):
        (tmp_path / "bad.yaml").write_text(text)
        result = CliRunner().invoke(cli.app, ["train", "s.zarr", "--config", str(tmp_path / "bad.yaml")])
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output, text
    for text, said in (("steps: 1e100\n", "steps must be a whole number"), ("lr: [1\nsteps: 2\n", "line 2")):
        (tmp_path / "bad.yaml").write_text(text)
        result = CliRunner().invoke(cli.app, ["train", "s.zarr", "--config", str(tmp_path / "bad.yaml")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output  # one line, no YAML dump


def test_run_name_cannot_leave_the_storage_path(tmp_path):
    """`--run-name ../../x` is refused: checkpoints never go outside --storage-path."""
    from typer.testing import CliRunner

    import cli

    for name in ("../../x", "a/b", "a'b"):
        result = CliRunner().invoke(
            cli.app,
            [
                "train",
                str(tmp_path / "s.zarr"),
                "--run-name",
                name,
                "--storage-path",
                str(tmp_path / "deep" / "ray"),
            ],
        )
        assert result.exit_code == 2 and "not a safe name" in result.output, result.output
    assert not any(tmp_path.rglob("*"))


def test_empty_train_split_is_refused_before_ray_starts(store, tmp_path, monkeypatch):
    """An empty train split is refused at once, before Ray starts (not after retries)."""
    _no_ray(monkeypatch)
    empty = _store_with_splits(store, tmp_path / "no-train.zarr", train=None, valid=("2015-06-01", None))
    with pytest.raises(NowcastError, match="train split .* 0 training clip") as exc:
        tr.train(_cfg(empty, tmp_path, "no-train", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    assert exc.value.exit_code == 2 and not (tmp_path / "m.db").exists()


def test_a_run_resumes_only_on_the_store_it_started_on(store, tmp_path, monkeypatch):
    """Resuming a run name on a different store is refused (unless --force), not done silently."""
    import shutil

    from pipeline.store import Store

    cfg = _cfg(store, tmp_path, "fingerprint", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}").resolved()
    tr.check_run_store(cfg, Store.open(store))  # first start: recorded
    tr.check_run_store(cfg, Store.open(store))  # same store: fine
    moved = Path(shutil.copytree(store, tmp_path / "moved.zarr"))
    tr.check_run_store(cfg, Store.open(moved))  # the same data elsewhere: fine
    other = _store_with_splits(
        store,
        tmp_path / "other.zarr",
        train=("2015-06-01", "2015-06-04"),
        valid=("2015-06-04", None),
        test=None,
    )
    with pytest.raises(NowcastError, match="another --run-name.*--force") as exc:
        tr.check_run_store(cfg, Store.open(other))
    assert exc.value.exit_code == 2
    _no_ray(monkeypatch)
    with pytest.raises(NowcastError, match="--force"):  # train() refuses before Ray starts
        tr.train(_cfg(other, tmp_path, "fingerprint", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    tr.check_run_store(dataclasses.replace(cfg, force=True), Store.open(other))
    tr.check_run_store(cfg, Store.open(other))  # --force moved the record to the new store


@pytest.mark.slow
def test_empty_validation_split_registers_a_version_that_is_not_champion(
    store, ray_cluster, sqlite_uri, tmp_path, capsys
):
    """Training with an empty validation split registers a version that is not champion (it has no
    score)."""
    import mlflow

    no_valid = _store_with_splits(
        store,
        tmp_path / "no-valid.zarr",
        train=("2015-06-01", "2015-06-03"),
        valid=None,
        test=("2015-06-03", None),
    )
    res = tr.train(
        _cfg(no_valid, tmp_path, "no-valid", tracking_uri=sqlite_uri, steps=3, register_as="nowcast-unscored")
    )
    assert "no validation score" in capsys.readouterr().out
    assert res.registered_version == 1 and not res.promoted and res.best_step is None
    client = mlflow.MlflowClient(sqlite_uri)
    with pytest.raises(mlflow.exceptions.MlflowException, match="champion"):
        client.get_model_version_by_alias("nowcast-unscored", "champion")


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(
    store, ray_cluster, sqlite_uri, tmp_path, capsys
):
    """A corrupt latest checkpoint does not block resume: here its train_state.pt
    is a pickle that would run code: it is never unpickled, it is set aside, and the run resumes from
    the previous good checkpoint, logging no step twice."""
    import mlflow

    cfg = _cfg(store, tmp_path, "damaged", tracking_uri=sqlite_uri)
    latest = Path(tr.train(cfg).checkpoint_path)  # checkpoints at steps 3 and 6
    marker = tmp_path / "code-ran"
    torch.save({"step": 6, "payload": _RunsCode(marker)}, latest / "train_state.pt")
    res = tr.train(dataclasses.replace(cfg, steps=9))
    out = capsys.readouterr().out
    assert "is damaged" in out and "kept aside" in out and "(step 3)" in out, out
    assert not marker.exists()
    assert (tmp_path / "ray" / "damaged" / "damaged" / latest.name / "train_state.pt").is_file()
    assert res.final_step == 9 and res.segments == [[1, 3], [4, 9]]
    history = mlflow.MlflowClient(sqlite_uri).get_metric_history(res.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 10))


#: Lines of Ray's own that used to fill the terminal.
RAY_NOISE = re.compile(
    r"\(\w+ pid=\d+|PlacementGroupCleaner|State API|Token authentication|core_worker|"
    r"INFO worker\.py|packaging\.py|PreemptionWatcher|run snapshot"
)


def _train_workers_alive(auth_token: str) -> list[int]:
    """Pids of the Ray Train worker processes (their titles name RayTrainWorker) of the cluster started
    with ``auth_token`` (inherited by its processes; other clusters on the machine do not count)."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            ours = proc.environ().get("RAY_AUTH_TOKEN") == auth_token
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if ours and "RayTrainWorker" in " ".join(proc.info["cmdline"] or ()):
            alive.append(proc.info["pid"])
    return alive


def _loss_steps(uri: str, run_name: str) -> list[int]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("nowcast").experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
    )
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killing_the_driver_stops_the_workers_and_no_step_is_logged_twice(store, tmp_path):
    """`kill -9` of the `nowcast train` driver on a Ray cluster (a real
    `ray start --head`); the workers log and checkpoint nothing more, a resumed run logs every step exactly
    once and keeps at most num_to_keep checkpoints; the driver's output holds no Ray log lines."""
    import secrets
    import signal
    import subprocess
    import sys
    import time

    from tests.pipeline._ray_fixtures import ray_head

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), PYTHONPATH=str(repo))
    env.pop("RAY_ADDRESS", None)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "c.yaml").write_text(
        "in_len: 3\nout_len: 3\nlog_every: 1\nsystem_metrics: false\nval_clips: 4\n"
        "cell: convgru\nbatch_size: 2\ncheckpoint_every: 3\nval_every: 0\n"
    )
    run_dir = tmp_path / "ray" / "killed"

    def command(steps: int, address: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cli",
            "train",
            str(store),
            "--steps",
            str(steps),
            "--run-name",
            "killed",
            "--config",
            str(tmp_path / "c.yaml"),
            "--storage-path",
            str(tmp_path / "ray"),
            "--tracking-uri",
            uri,
            "--ray-address",
            address,
        ]

    with ray_head(tmp_path, env) as address:
        out = open(tmp_path / "driver.out", "w")
        driver = subprocess.Popen(
            command(400, address), env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 600
        while "[train] step 5/400" not in (tmp_path / "driver.out").read_text():
            assert driver.poll() is None and time.monotonic() < deadline, (
                tmp_path / "driver.out"
            ).read_text()
            time.sleep(0.5)
        token = env["RAY_AUTH_TOKEN"]
        assert _train_workers_alive(token)  # the condition polled below can become false
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # the workers stop once their driver is gone: when no worker process of this cluster is left,
        # nothing can log or checkpoint any more
        deadline = time.monotonic() + 180
        while _train_workers_alive(token):
            assert time.monotonic() < deadline, "Ray Train workers still alive 180 s after the driver died"
            time.sleep(0.5)
        logged = _loss_steps(uri, "killed")
        assert logged == list(range(1, logged[-1] + 1)) and logged[-1] < 400
        resumed = subprocess.run(
            command(logged[-1] + 4, address),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _loss_steps(uri, "killed") == list(range(1, logged[-1] + 5))  # each step once
    assert len([d for d in run_dir.glob("checkpoint_*") if d.is_dir()]) <= 2  # num_to_keep
    output = (tmp_path / "driver.out").read_text() + resumed.stdout + resumed.stderr
    assert "[train] step 5/400" in output and "[ray] connected to" in output
    assert not [line for line in output.splitlines() if RAY_NOISE.search(line)]
