"""Tests for pipeline.evaluate: the HKO-7 fixed protocol on a tiny synthetic store.

The reference computation reads the store with zarr directly (not through pipeline.dataset or
pipeline.store) and scores each clip with SkillScores one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import NowcastError
from trajgru.metrics import SkillScores

SIZE = 48


def _make_store(root: Path, frames_per_day: int = 60, missing_frame_rate: float = 0.03) -> Path:
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    synth_archive(
        SynthConfig(
            out_dir=root / "archive",
            days=3,
            frames_per_day=frames_per_day,
            size_px=SIZE,
            seed=3,
            workers=1,
            missing_frame_rate=missing_frame_rate,
        ),
        progress=False,
    )
    store = root / "store.zarr"
    ingest(IngestConfig(archive=root / "archive", store=store, workers=0), progress=False)
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _make_store(tmp_path_factory.mktemp("eval"))


def _reference_clips(store: Path, split: str = "test"):
    """(starts, list of (frames float (25, H, W), masks bool (25, H, W))) read with zarr directly."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    starts = np.asarray(g[f"catalog/{split}/sequent_starts_s"][:], dtype=np.int64)
    times = np.asarray(g["time"][:], dtype=np.int64)
    interval = int(g.attrs["interval_s"])
    present = np.asarray(g["present"][:], bool) if "present" in g else np.ones(times.size, bool)
    frames_all, masks_all = g["frames"][:], g["masks"][:]
    clips = []
    for s in starts:
        fr = np.zeros((25, SIZE, SIZE), np.float32)
        mk = np.zeros((25, SIZE, SIZE), bool)
        for k in range(25):
            hit = np.flatnonzero(times == s + k * interval)
            if hit.size and present[hit[0]]:
                fr[k] = frames_all[hit[0]] / 255.0
                mk[k] = masks_all[hit[0]]
        clips.append((fr, mk))
    return starts, clips


def _reference_persistence_scores(store: Path) -> dict:
    starts, clips = _reference_clips(store)
    ref = SkillScores(20)
    for fr, mk in clips:
        truth = fr[5:25][:, None, None]  # (20, 1, 1, H, W)
        pred = np.repeat(fr[4][None], 20, axis=0)[:, None, None]
        ref.update(pred, truth, mk[5:25][:, None, None])
    return ref.result()


def _assert_same_scores(a: dict, b: dict, rtol: float = 1e-5):
    """Counts and categorical scores exactly; error sums to float32 reduction accuracy (SkillScores
    reduces each update in float32, so batching the clips differently changes the last bits)."""
    for key in ("tp", "fn", "fp", "tn"):
        assert np.array_equal(a[key], b[key]), key
    for key in ("csi", "hss", "pod", "far", "gss"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in ("mse", "mae", "b_mse", "b_mae"):
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=key)
    assert a["n_sequences"] == b["n_sequences"]


def _cfg(store, model, tmp_path, **kw):
    from pipeline.evaluate import EvaluateConfig

    kw.setdefault("log_to_mlflow", False)
    kw.setdefault("out_json", tmp_path / f"{model}.json")
    return EvaluateConfig(store=store, model_uri=model, **kw)


def test_persistence_matches_clip_by_clip_reference(store, tmp_path):
    from pipeline.evaluate import evaluate

    res = evaluate(_cfg(store, "persistence", tmp_path, batch_size=3))
    starts, _ = _reference_clips(store)
    assert res.n_clips == len(starts) > 3
    _assert_same_scores(res.scores, _reference_persistence_scores(store))
    # the masks were applied: fewer counted pixels than clips * lead times * frame pixels
    counted = res.scores["tp"] + res.scores["fn"] + res.scores["fp"] + res.scores["tn"]
    assert np.all(counted[:, 0] < len(starts) * SIZE * SIZE)
    assert "persistence" in res.table and "CSI" in res.table


def test_persistence_and_optical_flow_share_clips_and_json(store, tmp_path):
    from pipeline.evaluate import evaluate

    pers = evaluate(_cfg(store, "persistence", tmp_path))
    flow = evaluate(_cfg(store, "optical-flow", tmp_path))
    assert pers.n_clips == flow.n_clips
    doc_p = json.loads(pers.json_path.read_text())
    doc_f = json.loads(flow.json_path.read_text())
    assert doc_p["clip_starts"] == doc_f["clip_starts"]
    assert doc_p["clip_starts"]["count"] == pers.n_clips
    assert doc_p["model_uri"] == "persistence" and doc_p["split"] == "test"
    assert doc_p["store"]["path"].endswith("store.zarr")
    assert doc_p["scores"]["n_sequences"] == pers.n_clips
    # JSON scores are the result (NaN -> null)
    csi = np.array(doc_p["scores"]["csi"], dtype=float)
    np.testing.assert_array_equal(csi, pers.scores["csi"])
    assert pers.plot_path.exists() and pers.plot_path.suffix == ".png"
    # the two forecasters differ, so the scores must too
    assert not np.array_equal(pers.scores["mse"], flow.scores["mse"])


def test_max_clips_takes_the_first_clips(store, tmp_path):
    from pipeline.evaluate import evaluate

    res = evaluate(_cfg(store, "persistence", tmp_path, max_clips=2))
    starts, clips = _reference_clips(store)
    ref = SkillScores(20)
    for fr, mk in clips[:2]:
        ref.update(np.repeat(fr[4][None], 20, 0)[:, None, None], fr[5:][:, None, None], mk[5:][:, None, None])
    assert res.n_clips == 2
    _assert_same_scores(res.scores, ref.result())


def test_out_len_shorter_than_model(store, tmp_path):
    from pipeline.evaluate import evaluate

    res = evaluate(_cfg(store, "persistence", tmp_path, out_len=4, max_clips=3))
    assert res.scores["csi"].shape == (4, 5)


def test_split_without_clips_raises(tmp_path):
    from pipeline.evaluate import evaluate

    short = _make_store(tmp_path / "short", frames_per_day=20, missing_frame_rate=0.0)
    with pytest.raises(NowcastError, match="no evaluation clips"):
        evaluate(_cfg(short, "persistence", tmp_path))


def test_missing_store_and_unknown_model_raise(store, tmp_path):
    from pipeline.evaluate import evaluate

    with pytest.raises(NowcastError, match="no store at .*nope.zarr"):
        evaluate(_cfg(tmp_path / "nope.zarr", "persistence", tmp_path))
    with pytest.raises(NowcastError, match="unknown model 'no-such-model'"):
        evaluate(_cfg(store, "no-such-model", tmp_path))
    with pytest.raises(NowcastError, match="split 'no-such-split' is not in the store's catalog"):
        evaluate(_cfg(store, "persistence", tmp_path, split="no-such-split"))


def _checkpoint(tmp_path: Path, size: int, run_id: str | None = None) -> Path:
    from pipeline.checkpoints import save_model_files
    from trajgru import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / f"ckpt{size}"
    save_model_files(build_model("tiny", height=size, width=size), ckpt)
    if run_id:
        (ckpt / "meta.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    return ckpt


def test_model_frame_size_must_match_store(store, tmp_path):
    from pipeline.evaluate import evaluate

    with pytest.raises(NowcastError, match="32x32"):
        evaluate(_cfg(store, str(_checkpoint(tmp_path, 32)), tmp_path))


def test_checkpoint_is_scored_like_its_module(store, tmp_path):
    """A checkpoint's scores equal scoring the rebuilt module by hand on the same clips."""
    from pipeline.checkpoints import load_model_files
    from pipeline.evaluate import evaluate

    ckpt = _checkpoint(tmp_path, SIZE)
    res = evaluate(_cfg(store, str(ckpt), tmp_path, max_clips=2, batch_size=1))
    model, _ = load_model_files(ckpt)
    _, clips = _reference_clips(store)
    ref = SkillScores(20)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([c[0] for c in clips[:2]], axis=1)[:, :, None])  # (25, 2, 1, H, W)
        pred = model(x[:5]).clamp(0, 1)
    masks = np.stack([c[1] for c in clips[:2]], axis=1)[:, :, None]
    ref.update(pred, x[5:], masks[5:])
    _assert_same_scores(res.scores, ref.result(), rtol=1e-5)


@pytest.mark.slow
def test_logs_to_mlflow_new_run_and_model_run(store, tmp_path):
    import mlflow

    from pipeline.evaluate import evaluate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = evaluate(_cfg(store, "persistence", tmp_path, log_to_mlflow=True, tracking_uri=uri, max_clips=3))
    client = mlflow.MlflowClient(uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.info.run_name == "evaluate-persistence"
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for thr in ("0.5", "2", "5", "10", "30"):  # the names training uses for validation: {split}_csi_5mm_h
        assert f"test_csi_{thr}mm_h" in m or np.all(
            np.isnan(res.scores["csi"][:, ["0.5", "2", "5", "10", "30"].index(thr)])
        )
    assert m["test_b_mse"] == pytest.approx(float(np.nanmean(res.scores["b_mse"])))
    assert m["test_csi_0.5mm_h"] == pytest.approx(float(np.nanmean(res.scores["csi"][:, 0])))
    history = client.get_metric_history(res.mlflow_run_id, "test_csi_0.5mm_h_by_lead")
    assert sorted(h.step for h in history) == [6 * (k + 1) for k in range(20)]
    arts = {a.path for a in client.list_artifacts(res.mlflow_run_id, "evaluation/test")}
    verification_plot = res.json_path.with_name(res.json_path.stem + "_verification.png").name
    assert arts == {
        f"evaluation/test/{res.json_path.name}",
        f"evaluation/test/{res.plot_path.name}",
        f"evaluation/test/{verification_plot}",
    }
    assert m["test_crps"] == pytest.approx(float(np.nanmean(res.verification["crps"])))
    assert "test_fss_1mm_h_17px" in m and "test_brier_skill_1mm_h" in m

    # a checkpoint that names its training run: the evaluation is logged there
    exp = client.create_experiment("train", artifact_location=(tmp_path / "train-artifacts").as_uri())
    train_run = client.create_run(exp, run_name="train-run").info.run_id
    client.set_terminated(train_run)
    ckpt = _checkpoint(tmp_path, SIZE, run_id=train_run)
    res2 = evaluate(_cfg(store, str(ckpt), tmp_path, log_to_mlflow=True, tracking_uri=uri, max_clips=1))
    assert res2.mlflow_run_id == train_run
    assert "test_b_mae" in client.get_run(train_run).data.metrics


def test_compare_scores_models_on_identical_clips(store, tmp_path):
    from pipeline.evaluate import compare, compare_models, evaluate

    out = compare_models(
        store, ["persistence", "optical-flow"], max_clips=3, log_to_mlflow=False, out_dir=tmp_path / "cmp"
    )
    assert out.n_clips == 3 and [r.n_clips for r in out.results] == [3, 3]
    assert "persistence" in out.table and "optical-flow" in out.table and "CSI" in out.table
    solo = evaluate(_cfg(store, "persistence", tmp_path, max_clips=3))
    _assert_same_scores(out.results[0].scores, solo.scores)
    assert all(r.json_path.exists() for r in out.results)
    text = compare(store, ["persistence"], max_clips=1, log_to_mlflow=False)
    assert isinstance(text, str) and "persistence" in text


@pytest.mark.slow
def test_ray_workers_equal_in_process(store, tmp_path):
    import ray

    from pipeline.evaluate import evaluate

    local = evaluate(_cfg(store, "persistence", tmp_path, out_json=tmp_path / "a.json"))
    started_here = not ray.is_initialized()
    try:
        par = evaluate(_cfg(store, "persistence", tmp_path, workers=2, out_json=tmp_path / "b.json"))
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    assert par.n_clips == local.n_clips
    _assert_same_scores(par.scores, local.scores)
    for key in ("fss", "crps", "brier", "brier_skill", "roc_auc"):  # the verification merges across workers
        np.testing.assert_allclose(par.verification[key], local.verification[key], rtol=1e-9, err_msg=key)
    if started_here:
        assert not ray.is_initialized()  # evaluate shuts down the Ray it started


def test_default_json_path_and_short_names(store, tmp_path, monkeypatch):
    from pipeline.evaluate import evaluate, short_name

    monkeypatch.chdir(tmp_path)
    res = evaluate(_cfg(store, "persistence", tmp_path, out_json=None, max_clips=1))
    assert res.json_path == Path(f"{store}.evaluations") / "persistence-test.json" and res.json_path.exists()
    assert short_name("nowcast-tiny/3") == "nowcast-tiny_3"
    assert short_name("/runs/demo/checkpoint_000004") == "demo_checkpoint_000004"


# ---------------------------------------------------------------- output locations
def test_evaluate_leaves_nothing_in_the_current_directory(store, tmp_path, monkeypatch):
    """No JSON, plot, mlflow.db, mlruns/ or mlartifacts/ in the cwd; without a tracking store nothing
    is logged, and a note says so."""
    from pipeline.evaluate import evaluate

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = evaluate(_cfg(store, "persistence", tmp_path, out_json=None, log_to_mlflow=True, max_clips=1))
    assert list(cwd.iterdir()) == []
    assert res.mlflow_run_id is None and any("not logged to MLflow" in n for n in res.notes)
    assert res.json_path.parent == Path(f"{store}.evaluations") and res.plot_path.exists()


@pytest.mark.slow
def test_checkpoint_from_another_directory_and_tracking_store(store, tmp_path, monkeypatch):
    """`evaluate --model ../ckpt` from a directory whose ./mlflow.db does not hold the checkpoint's run:
    logged into a new run with a note, instead of failing with "Run with id ... not found"."""
    import mlflow

    from pipeline.evaluate import evaluate

    _checkpoint(tmp_path / "elsewhere", SIZE, run_id="0123456789abcdef0123456789abcdef")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.MlflowClient(f"sqlite:///{here / 'mlflow.db'}").search_experiments()  # ./mlflow.db exists
    res = evaluate(_cfg(store, "../elsewhere/ckpt48", tmp_path, log_to_mlflow=True, max_clips=1))
    run = mlflow.MlflowClient(f"sqlite:///{here / 'mlflow.db'}").get_run(res.mlflow_run_id)
    assert run.info.run_name == "evaluate-elsewhere_ckpt48" and "test_csi_0.5mm_h" in run.data.metrics
    assert any("is not in the tracking store" in n for n in res.notes)


@pytest.mark.slow
def test_compare_logs_skill_plots_and_reuses_baseline_scores(store, tmp_path, monkeypatch):
    import mlflow

    from pipeline import evaluate as ev

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    first = ev.compare_models(
        store, ["persistence", "optical-flow"], max_clips=2, tracking_uri=uri
    )  # no out_dir
    for res in first.results:  # the skill plot is logged even without local files
        names = {
            a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(res.mlflow_run_id, "evaluation/test")
        }
        assert any(n.endswith("_skill.png") for n in names), names
    out = tmp_path / "evaluation"
    ev.compare_models(
        store,
        ["persistence", "optical-flow"],
        max_clips=2,
        tracking_uri=uri,
        out_dir=out,
        reuse_baselines=True,
    )
    n_runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))

    def no_scoring(*args, **kwargs):
        raise AssertionError("a baseline was scored again")

    monkeypatch.setattr(ev, "score_clips", no_scoring)
    again = ev.compare_models(
        store,
        ["persistence", "optical-flow"],
        max_clips=2,
        tracking_uri=uri,
        out_dir=out,
        reuse_baselines=True,
    )
    assert (
        all(r.reused for r in again.results) and again.table.splitlines()[1:] == first.table.splitlines()[1:]
    )
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == n_runs
    # other clips: scored again
    monkeypatch.undo()
    third = ev.compare_models(
        store, ["persistence"], max_clips=1, log_to_mlflow=False, out_dir=out, reuse_baselines=True
    )
    assert not third.results[0].reused and third.n_clips == 1


def test_cli_no_log(store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cli

    monkeypatch.chdir(tmp_path)
    mlflow_db = tmp_path / "mlflow.db"
    result = CliRunner().invoke(
        cli.app,
        [
            "evaluate",
            str(store),
            "--model",
            "persistence",
            "--max-clips",
            "1",
            "--no-log",
            "--out-json",
            str(tmp_path / "p.json"),
            "--tracking-uri",
            f"sqlite:///{mlflow_db}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        not mlflow_db.exists() and "logged to MLflow" not in result.output and (tmp_path / "p.json").exists()
    )
    assert "evaluate persistence: 1/1" in result.output  # plain progress lines without a terminal


def test_ensemble_is_scored_on_its_mean_with_probabilistic_scores(store, tmp_path):
    """STEPS (3 members, seeded): the HKO-7 scores are those of the members' mean in rain rate, computed here
    clip by clip from clips read with zarr; the JSON holds the probabilistic scores and a rank histogram of
    M + 1 bins; a deterministic baseline gets no rank histogram but neighbourhood-probability scores."""
    from pipeline.baselines_pysteps import pixel_to_rain, rain_to_pixel, store_radar
    from pipeline.evaluate import evaluate
    from pipeline.forecasters import load_forecaster
    from pipeline.sources.grid import ZR
    from pipeline.store import Store

    res = evaluate(_cfg(store, "steps:members=3,seed=4", tmp_path, max_clips=2, out_json=tmp_path / "s.json"))
    _, clips = _reference_clips(store)
    radar = store_radar(Store.open(store))  # the store's pixel size (512 km / 48 px) and cadence
    assert radar.km_per_px == pytest.approx(512.0 / SIZE)
    forecaster = load_forecaster("steps:members=3,seed=4", radar=radar)
    ref = SkillScores(20)
    for fr, mk in clips[:2]:
        inputs = torch.from_numpy(fr[:5])[:, None, None]
        members = forecaster.ensemble(inputs, torch.from_numpy(mk[:5])[:, None, None])[:, :, 0, 0].numpy()
        mean = rain_to_pixel(pixel_to_rain(members, None, ZR()).mean(axis=0), ZR())
        ref.update(mean[:, None, None], fr[5:][:, None, None], mk[5:][:, None, None])
    _assert_same_scores(res.scores, ref.result())
    doc = json.loads(res.json_path.read_text())["verification"]
    assert doc["members"] == 3 and len(doc["rank_histogram"]) == 4
    assert doc["crps"][0] is not None and len(doc["fss"]) == 20
    assert res.json_path.with_name("s_verification.png").is_file()
    det = evaluate(_cfg(store, "persistence", tmp_path, max_clips=2, out_json=tmp_path / "p.json"))
    assert det.verification["rank_histogram"] is None and det.verification["neighbourhood_px"] >= 1
    assert np.isfinite(det.verification["brier"]).any()
