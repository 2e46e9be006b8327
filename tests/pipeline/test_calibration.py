"""Tests for calibrated exceedance probabilities: the logistic fit against scikit-learn, the predictors
against a naive loop, hand cases, the calibration file, and ``nowcast calibrate`` feeding ``evaluate`` and
``predict`` on a tiny synthetic store."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import NowcastError
from pipeline.probabilities import (
    CALIBRATION_FEATURES,
    CalibratedProbabilities,
    calibration_features,
    fit_logistic,
    logistic,
)
from pipeline.verification import Verification

SIZE = 48
N_FEATURES = len(CALIBRATION_FEATURES)


def _logistic_sample(seed: int, n: int = 20_000):
    rng = np.random.default_rng(seed)
    features = rng.random((n, 3))
    true_weights = np.array([2.0, -1.5, 0.7, -0.4])
    events = rng.random(n) < logistic(features, true_weights)
    return features, events


def test_fit_logistic_matches_scikit_learn():
    """Unpenalised maximum likelihood: the same weights as scikit-learn's LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    features, events = _logistic_sample(0)
    ours = fit_logistic(features, events, l2=0.0)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(features, events)
    np.testing.assert_allclose(ours[:-1], reference.coef_[0], atol=2e-3)
    assert ours[-1] == pytest.approx(reference.intercept_[0], abs=2e-3)


def test_fitted_probabilities_average_to_the_event_rate():
    """At the maximum of the likelihood the intercept's score equation holds: mean(p) = mean(event)."""
    features, events = _logistic_sample(1)
    weights = fit_logistic(features, events)
    assert logistic(features, weights).mean() == pytest.approx(events.mean(), abs=1e-5)


def _naive_fraction(field: np.ndarray, threshold: float, size_px: int, y: int, x: int) -> float:
    half = size_px // 2
    box = field[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
    return float(np.mean(box >= threshold))


def test_calibration_features_equal_a_naive_loop():
    """Each predictor is the fraction of pixels >= fraction * t of its field in the square around the pixel,
    cut at the edges; NaN counts as no rain."""
    rng = np.random.default_rng(2)
    forecast = rng.gamma(0.5, 6.0, (2, 30, 30))
    last = rng.gamma(0.5, 6.0, (2, 30, 30))
    last[:, :4] = np.nan
    features = calibration_features(forecast, last, 5.0)
    assert features.shape == (2, 30, 30, N_FEATURES) and features.dtype == np.float32
    fields = {"forecast": forecast, "last_observed": np.nan_to_num(last, nan=0.0)}
    for b, y, x in [(0, 0, 0), (1, 15, 15), (0, 29, 3), (1, 2, 27)]:
        for k, (name, fraction, size_px) in enumerate(CALIBRATION_FEATURES):
            expected = _naive_fraction(fields[name][b], fraction * 5.0, size_px, y, x)
            assert features[b, y, x, k] == pytest.approx(expected, abs=1e-6)


def _calibration(weights: np.ndarray, thresholds=(1.0, 5.0), digest: str = "abc") -> CalibratedProbabilities:
    return CalibratedProbabilities(
        tuple(thresholds), weights, {"name": "m", "digest": digest}, {"split": "valid"}
    )


def test_probabilities_hand_cases():
    """Only an intercept log(1/3): P = 0.25 everywhere. A steep weight on the 1 px event: the binary
    forecast (0 or 1) at the threshold it belongs to."""
    forecast = np.zeros((2, 1, 8, 8))
    forecast[:, 0, 2:4, 2:4] = 7.0
    last = np.zeros((1, 8, 8))
    weights = np.zeros((2, 2, N_FEATURES + 1))
    weights[0, :, -1] = np.log(1.0 / 3.0)
    weights[1, :, 0], weights[1, :, -1] = 60.0, -30.0
    probabilities = _calibration(weights).probabilities(forecast, last)
    assert probabilities.shape == (2, 1, 2, 8, 8)
    np.testing.assert_allclose(probabilities[0], 0.25)
    for k, threshold in enumerate((1.0, 5.0)):
        np.testing.assert_allclose(probabilities[1, 0, k], forecast[1, 0] >= threshold, atol=1e-12)


def test_calibration_file_round_trip_and_refusals(tmp_path):
    weights = np.random.default_rng(3).normal(size=(3, 2, N_FEATURES + 1))
    calibration = _calibration(weights)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration.to_json_dict()))
    back = CalibratedProbabilities.load(path)
    np.testing.assert_array_equal(back.weights, weights)
    assert back.thresholds_mm_h == (1.0, 5.0) and back.model == calibration.model

    def refused(change, match):
        record = calibration.to_json_dict()
        change(record)
        with pytest.raises(NowcastError, match=match):
            CalibratedProbabilities.from_json_dict(json.loads(json.dumps(record)))

    refused(lambda r: r.update(format="other/1"), "format is not")
    refused(lambda r: r.update(features=r["features"][:-1]), "predictors differ")
    refused(lambda r: r["weights"][0][0].__setitem__(0, float("nan")), "not finite")
    refused(lambda r: r.update(weights=[w[:1] for w in r["weights"]]), "shape")
    refused(lambda r: r.update(thresholds_mm_h=[5.0, 1.0]), "positive and increasing")
    refused(lambda r: r["model"].pop("digest"), "no model digest")
    path.write_text("{not json")
    with pytest.raises(NowcastError, match=r"not JSON \(line 1"):
        CalibratedProbabilities.load(path)
    with pytest.raises(NowcastError, match="cannot read the calibration"):
        CalibratedProbabilities.load(tmp_path / "missing.json")


def test_a_calibration_is_refused_for_another_model():
    calibration = _calibration(np.zeros((4, 2, N_FEATURES + 1)))
    mine = SimpleNamespace(name="m", digest="abc", members=1)
    calibration.check_for(mine, 4, (5.0,))
    with pytest.raises(NowcastError, match="fitted for 'm', not for 'other'"):
        calibration.check_for(SimpleNamespace(name="other", digest="xyz", members=1), 4)
    with pytest.raises(NowcastError, match="is an ensemble"):
        calibration.check_for(SimpleNamespace(name="m", digest="abc", members=20), 4)
    with pytest.raises(NowcastError, match="covers 4 lead times, fewer than the 20"):
        calibration.check_for(mine, 20)
    with pytest.raises(NowcastError, match="mm/h, not 10; ask for those"):
        calibration.check_for(mine, 4, (1.0, 10.0))
    assert calibration.select((5.0,)).weights.shape == (4, 1, N_FEATURES + 1)


def test_verification_scores_the_calibrated_probabilities():
    """With a calibration, the Brier score is mean((p - o)^2) of the calibration's own probabilities."""
    rng = np.random.default_rng(4)
    forecast = rng.gamma(0.6, 5.0, (1, 2, 3, 20, 20))
    truth = rng.gamma(0.6, 5.0, (2, 3, 20, 20))
    truth[:, :, :2] = np.nan
    last = rng.gamma(0.6, 5.0, (3, 20, 20))
    calibration = _calibration(rng.normal(size=(2, 2, N_FEATURES + 1)) * 0.5)
    verification = Verification(2, calibration=calibration).update(forecast, truth, last)
    result = verification.result()
    assert result["probability_method"].startswith("calibrated")
    assert result["neighbourhood_px"] is None
    p = calibration.probabilities(forecast[0], last)
    for lead in range(2):
        scored = np.isfinite(truth[lead])
        for k, threshold in enumerate((1.0, 5.0)):
            expected = np.mean((p[lead][:, k][scored] - (truth[lead][scored] >= threshold)) ** 2)
            assert result["brier"][lead, k] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="need the last observed frame"):
        Verification(2, calibration=calibration).update(forecast, truth)
    with pytest.raises(ValueError, match="not ensembles"):
        Verification(2, members=3, calibration=calibration)


# --------------------------------------------------------------------------- the stage, on a store
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    root = tmp_path_factory.mktemp("calibrate")
    synth_archive(
        SynthConfig(out_dir=root / "archive", days=3, frames_per_day=60, size_px=SIZE, seed=5, workers=1),
        progress=False,
    )
    ingest(IngestConfig(archive=root / "archive", store=root / "store.zarr", workers=0), progress=False)
    return root / "store.zarr"


@pytest.fixture(scope="module")
def persistence_calibration(store, tmp_path_factory) -> Path:
    from pipeline.calibrate import CalibrateConfig, calibrate

    out = tmp_path_factory.mktemp("cal") / "persistence.json"
    result = calibrate(
        CalibrateConfig(
            store=store, model_uri="persistence", out=out, max_clips=6, thresholds_mm_h=(1.0, 5.0)
        )
    )
    assert result.path == out and result.n_clips == 6
    assert set(result.brier_skill_calibrated) == {"1", "5"}
    return out


def test_calibrate_writes_a_file_fitted_on_the_validation_split(store, persistence_calibration):
    calibration = CalibratedProbabilities.load(persistence_calibration)
    assert calibration.model["digest"] == "baseline:persistence"
    assert calibration.fitted_on["split"] == "valid" and calibration.fitted_on["n_clips"] == 6
    assert calibration.weights.shape == (20, 2, N_FEATURES + 1)
    assert calibration.thresholds_mm_h == (1.0, 5.0)


def test_evaluate_scores_calibrated_probabilities_in_process_and_on_ray(
    store, persistence_calibration, tmp_path
):
    from pipeline.evaluate import EvaluateConfig, evaluate

    def run(**kw):
        cfg = EvaluateConfig(store=store, model_uri="persistence", max_clips=4, log_to_mlflow=False, **kw)
        return evaluate(cfg)

    plain = run(out_json=tmp_path / "plain.json")
    calibrated = run(calibration=persistence_calibration, out_json=tmp_path / "cal.json")
    on_ray = run(calibration=persistence_calibration, out_json=tmp_path / "ray.json", workers=2)
    assert calibrated.verification["probability_method"].startswith("calibrated")
    np.testing.assert_array_equal(calibrated.verification["prob_thresholds_mm_h"], [1.0, 5.0])
    assert not np.allclose(
        plain.verification["brier"][:, :2], calibrated.verification["brier"], equal_nan=True
    )
    np.testing.assert_allclose(on_ray.verification["brier"], calibrated.verification["brier"], rtol=1e-12)
    record = json.loads((tmp_path / "cal.json").read_text())
    assert record["verification"]["probability_method"].startswith("calibrated")
    with pytest.raises(NowcastError, match="fitted for 'persistence', not for 'optical-flow'"):
        evaluate(
            EvaluateConfig(
                store=store,
                model_uri="optical-flow",
                calibration=persistence_calibration,
                log_to_mlflow=False,
            )
        )


def test_predict_writes_the_calibrated_probabilities(store, persistence_calibration, tmp_path):
    """The Zarr probabilities equal the calibration applied by hand to persistence's forecast (the last input
    frame, HKO-7 Z-R) and the last input frame."""
    import xarray as xr
    import zarr

    from pipeline.predict import PredictConfig, predict
    from trajgru import units

    res = predict(
        PredictConfig(
            model_uri="persistence",
            out_dir=tmp_path / "z",
            store=store,
            format="zarr",
            probabilities_mm_h=(5.0,),
            calibration=persistence_calibration,
        )
    )
    g = zarr.open_group(str(store), mode="r")
    frames, masks = g["frames"][-1] / 255.0, np.asarray(g["masks"][-1], bool)
    rain = np.where(frames == 0, 0.0, units.pixel_to_rainfall(np.where(masks, frames, 0.0)))
    last = np.where(masks, rain, np.nan)
    forecast = np.repeat(np.where(masks, rain, 0.0)[None, None], 20, axis=0)
    calibration = CalibratedProbabilities.load(persistence_calibration).select((5.0,))
    expected = calibration.probabilities(forecast, last[None])[:, 0, 0]
    with xr.open_zarr(res.paths[0], consolidated=False, decode_times=False) as ds:
        values = ds["probability_of_rainfall_rate_above_threshold"].values[:, 0]
    np.testing.assert_allclose(values[:, masks], expected[:, masks], atol=1e-6)
    with pytest.raises(NowcastError, match="ask for some"):
        PredictConfig(model_uri="persistence", out_dir=tmp_path / "p", store=store, calibration="x.json")


def test_calibrate_command(store, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    out = tmp_path / "persistence.json"
    result = CliRunner().invoke(
        app, ["calibrate", str(store), "--model", "persistence", "--out", str(out), "--max-clips", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "Brier skill >= 5 mm/h" in result.output and out.is_file()
    refused = CliRunner().invoke(
        app, ["calibrate", str(store), "--model", "steps:members=2", "--out", str(out), "--max-clips", "1"]
    )
    assert refused.exit_code != 0 and "is an ensemble" in refused.output
