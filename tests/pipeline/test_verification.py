"""Tests for pipeline.verification and pipeline.probabilities: each score against a hand-computed case or
against pysteps' own one-shot function on the same fields."""

from __future__ import annotations

import numpy as np
import pytest
from pysteps.verification import probscores, spatialscores

from pipeline.probabilities import exceedance_probabilities, neighbourhood_fraction
from pipeline.verification import Verification, summary, verification_metrics


def _fields(seed: int, shape=(3, 2, 24, 24), members: int = 1):
    """Gamma-distributed rain (mm/h): members (M, T, B, H, W), truth (T, B, H, W) with NaN on a border."""
    rng = np.random.default_rng(seed)
    truth = rng.gamma(0.6, 5.0, shape)
    truth[:, :, :3] = np.nan
    return rng.gamma(0.6, 5.0, (members, *shape)), truth


def test_fss_equals_pysteps_fss_per_lead_time():
    """With one field per lead time, the accumulated FSS is pysteps' fss() of that field pair, for every
    threshold and neighbourhood; truth NaN counts as no event in both fields, as pysteps does."""
    members, truth = _fields(0, shape=(2, 1, 32, 32))
    ver = Verification(2, fss_scales_px=(1, 5, 17)).update(members, truth)
    fss = ver.result()["fss"]
    for lead in range(2):
        forecast = np.where(np.isnan(truth[lead, 0]), np.nan, members[0, lead, 0])
        for i, threshold in enumerate((1.0, 5.0, 10.0)):
            for j, scale in enumerate((1, 5, 17)):
                expected = spatialscores.fss(forecast, truth[lead, 0], threshold, scale)
                assert fss[lead, i, j] == pytest.approx(expected, rel=1e-12)


def test_fss_hand_computed():
    """One event pixel in each field, one pixel apart: FSS = 0 at 1 px; at 3 px (fractions 1/9 each, the
    two 3x3 squares sharing 6 pixels) FSS = 1 - (9 + 9 - 2 * 6) / (9 + 9) = 2/3."""
    forecast = np.zeros((1, 1, 1, 9, 9))
    truth = np.zeros((1, 1, 9, 9))
    forecast[0, 0, 0, 4, 4] = 8.0
    truth[0, 0, 4, 5] = 8.0
    fss = (
        Verification(1, fss_thresholds_mm_h=(5.0,), fss_scales_px=(1, 3))
        .update(forecast, truth)
        .result()["fss"]
    )
    assert fss[0, 0, 0] == pytest.approx(0.0)
    assert fss[0, 0, 1] == pytest.approx(2.0 / 3.0)


def test_brier_score_and_skill_hand_computed():
    """Member fractions 0.2, 0.8, 1, 0 against events 0, 1, 1, 0 at 1 mm/h: BS = (0.04 + 0.04)/4 = 0.02;
    climatology ō = 0.5, BS_clim = 0.25, so BSS = 1 - 0.02/0.25 = 0.92."""
    members = np.zeros((5, 1, 1, 1, 4))
    members[:1, ..., 0] = 2.0  # 1 of 5 members >= 1 mm/h
    members[:4, ..., 1] = 2.0
    members[:, ..., 2] = 2.0
    truth = np.array([0.0, 3.0, 3.0, 0.0]).reshape(1, 1, 1, 4)
    res = Verification(1, members=5, prob_thresholds_mm_h=(1.0,)).update(members, truth).result()
    assert res["brier"][0, 0] == pytest.approx(0.02)
    assert res["base_rate"][0, 0] == pytest.approx(0.5)
    assert res["brier_skill"][0, 0] == pytest.approx(0.92)


def test_crps_matches_pysteps_and_is_the_absolute_error_of_one_member():
    """CRPS of an ensemble equals pysteps' CRPS() on the scored pixels; a single member's CRPS is its mean
    absolute error (hand case: |1 - 2| and |3 - 0| -> 2)."""
    members, truth = _fields(1, shape=(1, 2, 16, 16), members=6)
    res = Verification(1, members=6).update(members, truth).result()
    assert res["crps"][0] == pytest.approx(probscores.CRPS(members[:, 0], truth[0]), rel=1e-12)
    one = Verification(1).update(
        np.array([1.0, 3.0]).reshape(1, 1, 1, 1, 2), np.array([2.0, 0.0]).reshape(1, 1, 1, 2)
    )
    assert one.result()["crps"][0] == pytest.approx(2.0)


def test_roc_auc_and_reliability_match_pysteps():
    """ROC area equals pysteps' ROC_curve (same probability thresholds) on the same probabilities; the
    reliability diagram equals pysteps' reldiag; a perfectly sorted forecast has AUC 1."""
    members, truth = _fields(2, shape=(1, 2, 20, 20), members=8)
    res = Verification(1, members=8).update(members, truth).result()
    probability = (members >= 5.0).mean(axis=0)[0]  # (B, H, W)
    _, _, area = probscores.ROC_curve(probability, truth[0], 5.0, n_prob_thrs=21, compute_area=True)
    assert res["roc_auc"][0, 1] == pytest.approx(area)
    forecast, observed = probscores.reldiag(probability, truth[0], 5.0, n_bins=10, min_count=1)
    diagram = res["reliability_diagram"]["5"]
    np.testing.assert_allclose(diagram["forecast"], forecast)
    np.testing.assert_allclose(diagram["observed"], observed)
    perfect = Verification(1).update((truth[None] >= 5.0) * 20.0, truth).result()
    assert perfect["roc_auc"][0, 1] == pytest.approx(1.0)


def test_reliability_term_hand_computed():
    """Every probability 0.2 (one bin) with an observed frequency of 0.5: reliability = (0.2 - 0.5)^2."""
    members = np.zeros((5, 1, 1, 1, 4))
    members[0] = 2.0  # probability 1/5 everywhere
    truth = np.array([0.0, 3.0, 3.0, 0.0]).reshape(1, 1, 1, 4)
    res = Verification(1, members=5, prob_thresholds_mm_h=(1.0,)).update(members, truth).result()
    assert res["reliability"][0, 0] == pytest.approx(0.09)


def test_rank_histogram_counts_an_observation_above_every_member():
    """Observations above all members fall in the last of M + 1 ranks; deterministic forecasts have none."""
    members = np.full((4, 1, 1, 3, 3), 1.0) + np.arange(4).reshape(4, 1, 1, 1, 1)
    truth = np.full((1, 1, 3, 3), 50.0)
    res = Verification(1, members=4).update(members, truth).result()
    np.testing.assert_array_equal(res["rank_histogram"], [0, 0, 0, 0, 1])
    assert Verification(1).update(members[:1], truth).result()["rank_histogram"] is None


def test_merge_equals_one_pass():
    """Two accumulators over halves of the sequences, merged, give the scores of one pass over all."""
    members, truth = _fields(3, shape=(2, 4, 16, 16), members=3)
    whole = Verification(2, members=3).update(members, truth).result()
    first = Verification(2, members=3).update(members[:, :, :2], truth[:, :2])
    first.merge(Verification(2, members=3).update(members[:, :, 2:], truth[:, 2:]))
    merged = first.result()
    for key in ("fss", "crps", "brier", "brier_skill", "reliability", "roc_auc"):
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, err_msg=key)
    with pytest.raises(ValueError, match="same lead times"):
        first.merge(Verification(3, members=3))


def test_unscored_pixels_are_left_out():
    """Truth NaN pixels do not count in the Brier sample."""
    members, truth = _fields(4, shape=(1, 1, 10, 10))
    ver = Verification(1).update(members, truth)
    assert ver.n_scored[0, 0] == np.isfinite(truth).sum() == 70


def test_summary_and_metrics_name_every_score():
    """summary() averages over lead times; MLflow metrics carry the split and per-lead curves."""
    members, truth = _fields(5)
    res = Verification(3).update(members, truth).result()
    means = summary(res)
    assert means["fss_5mm_h_5px"] == pytest.approx(np.nanmean(res["fss"][:, 1, 1]))
    assert means["brier_skill_5mm_h"] == pytest.approx(np.nanmean(res["brier_skill"][:, 1]))
    keys = {k for k, _, _ in verification_metrics(res, "test")}
    assert {"test_crps", "test_brier_skill_5mm_h", "test_fss_5mm_h_5px_by_lead"} <= keys


def test_neighbourhood_fraction_counts_pixels_inside_the_domain():
    """An event at a corner: its 3x3 fraction is 1/4 there (4 pixels inside), 1/9 one pixel in diagonally,
    and 0 two pixels away."""
    event = np.zeros((4, 4), bool)
    event[0, 0] = True
    frac = neighbourhood_fraction(event, 3)
    assert frac[0, 0] == pytest.approx(1 / 4)
    assert frac[1, 1] == pytest.approx(1 / 9)
    assert frac[0, 1] == pytest.approx(1 / 6)
    assert frac[2, 2] == 0.0


def test_exceedance_probabilities_ensemble_and_binary():
    """Ensembles give member fractions, one member with a 1 px neighbourhood gives 0/1 per threshold."""
    members = np.array([0.5, 2.0, 6.0, 12.0]).reshape(4, 1, 1)
    prob = exceedance_probabilities(members, (1.0, 5.0, 10.0))
    np.testing.assert_allclose(prob[:, 0, 0], [0.75, 0.5, 0.25])
    binary = exceedance_probabilities(np.array([[[6.0]]]), (1.0, 5.0, 10.0), neighbourhood_px=1)
    np.testing.assert_array_equal(binary[:, 0, 0], [1.0, 1.0, 0.0])


def test_cli_help_states_the_default_neighbourhood():
    """`nowcast evaluate/predict --help` name the default neighbourhood of pipeline.probabilities."""
    from pathlib import Path

    from pipeline.probabilities import DEFAULT_NEIGHBOURHOOD_PX

    cli = (Path(__file__).resolve().parents[2] / "cli.py").read_text()
    assert cli.count(f"(default: {DEFAULT_NEIGHBOURHOOD_PX}).") == 2
