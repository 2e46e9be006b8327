"""SkillScores against a hand-computed contingency table and a naive per-pixel reference."""

import json
import math

import numpy as np
import pytest
import torch

from trajgru.losses import balanced_weights
from trajgru.metrics import SkillScores, champion_score, scores_from_counts
from trajgru.units import rainfall_to_pixel

# pixel values: L below 2 mm/h (0.4624), M in [2, 5) mm/h, H >= 5 mm/h (0.5511)
L, M, H = 0.3, 0.5, 0.6


def hand_case():
    """seq_len 2, batch 1, 2x4 frames. Frame 0 written out; frame 1 all dry."""
    truth = np.zeros((2, 1, 2, 4))
    pred = np.zeros((2, 1, 2, 4))
    truth[0, 0] = [[H, M, L, L], [L, H, M, L]]
    pred[0, 0] = [[H, L, M, L], [H, M, H, L]]
    return pred, truth


def test_hand_contingency_table():
    pred, truth = hand_case()
    s = SkillScores(seq_len=2, thresholds=(2, 5)).update(pred, truth)
    r = s.result()
    # (truth event, pred event) per pixel of frame 0, row by row:
    # 2 mm/h (M or H): (1,1) (1,0) (0,1) (0,0) | (0,1) (1,1) (1,1) (0,0) -> TP 3, FN 1, FP 2, TN 2
    # 5 mm/h (H only): (1,1) (0,0) (0,0) (0,0) | (0,1) (1,0) (0,1) (0,0) -> TP 1, FN 1, FP 2, TN 4
    np.testing.assert_array_equal(r["tp"], [[3, 1], [0, 0]])
    np.testing.assert_array_equal(r["fn"], [[1, 1], [0, 0]])
    np.testing.assert_array_equal(r["fp"], [[2, 2], [0, 0]])
    np.testing.assert_array_equal(r["tn"], [[2, 4], [8, 8]])
    assert r["tp"].dtype == np.int64
    np.testing.assert_allclose(r["pod"][0], [3 / 4, 1 / 2])
    np.testing.assert_allclose(r["far"][0], [2 / 5, 2 / 3])
    np.testing.assert_allclose(r["csi"][0], [3 / 6, 1 / 4])
    # GSS: 2 mm/h: r = 4 * 5 / 8 = 2.5, (3 - 2.5) / (6 - 2.5) = 1/7; 5 mm/h: r = 2 * 3 / 8, 0.25 / 3.25 = 1/13
    np.testing.assert_allclose(r["gss"][0], [1 / 7, 1 / 13])
    # HSS = 2 (TP TN - FN FP) / ((TP+FN)(FN+TN) + (TP+FP)(FP+TN)):
    # 2 mm/h: 2 (6 - 2) / (4*3 + 5*4) = 1/4; 5 mm/h: 2 (4 - 2) / (2*5 + 3*6) = 1/7
    np.testing.assert_allclose(r["hss"][0], [1 / 4, 1 / 7])
    # frame 1: no event anywhere -> every ratio is 0/0
    for name in ("pod", "far", "csi", "gss", "hss"):
        assert np.isnan(r[name][1]).all(), name
    # frame 0 errors pred - truth: 0, -.2, .2, 0 | .3, -.1, .1, 0; balanced weights of truth: 5 2 1 1 | 1 5 2 1
    np.testing.assert_allclose(r["mse"], [0.19, 0.0], atol=1e-12)
    np.testing.assert_allclose(r["mae"], [0.9, 0.0], atol=1e-12)
    np.testing.assert_allclose(r["b_mse"], [0.04 * 2 + 0.04 + 0.09 + 0.01 * 5 + 0.01 * 2, 0.0], atol=1e-12)
    np.testing.assert_allclose(r["b_mae"], [0.2 * 2 + 0.2 + 0.3 + 0.1 * 5 + 0.1 * 2, 0.0], atol=1e-12)
    assert r["n_sequences"] == 1 and s.n_sequences == 1
    np.testing.assert_array_equal(r["thresholds"], [2.0, 5.0])


def test_hss_is_two_gss_over_one_plus_gss():
    rng = np.random.default_rng(0)
    tp, fn, fp, tn = rng.integers(0, 50, size=(4, 100))
    out = scores_from_counts(tp, fn, fp, tn)
    np.testing.assert_allclose(out["hss"], 2 * out["gss"] / (1 + out["gss"]), rtol=1e-12)


def test_perfect_forecast_scores():
    out = scores_from_counts(np.array(5), np.array(0), np.array(0), np.array(7))
    assert out["pod"] == 1 and out["far"] == 0 and out["csi"] == 1 and out["gss"] == 1 and out["hss"] == 1


def test_mask_removes_pixels():
    pred, truth = hand_case()
    mask = np.ones_like(truth, dtype=bool)
    mask[0, 0, 0, 1] = False  # truth M, pred L: a miss at 2 mm/h, a correct negative at 5 mm/h
    mask[1, 0, :, :2] = False  # 4 dry pixels of frame 1
    r = SkillScores(seq_len=2, thresholds=(2, 5)).update(pred, truth, mask).result()
    np.testing.assert_array_equal(r["fn"][0], [0, 1])
    np.testing.assert_array_equal(r["tn"][0], [2, 3])
    np.testing.assert_array_equal(r["tn"][1], [4, 4])
    assert r["mse"][0] == pytest.approx(0.19 - 0.04)
    assert r["b_mse"][0] == pytest.approx(0.28 - 0.08)
    # float 0/1 masks, 5-D masks and broadcast (H, W) masks mean the same thing
    r2 = SkillScores(2, (2, 5)).update(
        pred[:, :, None], truth[:, :, None], mask[:, :, None].astype(np.float32)
    )
    np.testing.assert_array_equal(r2.result()["tn"], r["tn"])
    hw = np.array([[True, False, True, True], [True, True, True, True]])
    r3 = SkillScores(2, (2, 5)).update(pred, truth, hw).result()
    np.testing.assert_array_equal(r3["fn"][0], [0, 1])
    assert r3["tn"][1].tolist() == [7, 7]


def test_fully_masked_gives_nan_and_zero_errors():
    pred, truth = hand_case()
    r = SkillScores(2, (2, 5)).update(pred, truth, np.zeros_like(truth)).result()
    assert np.isnan(r["csi"]).all() and np.isnan(r["hss"]).all() and np.isnan(r["gss"]).all()
    assert (r["mse"] == 0).all()


def test_empty_accumulator_is_nan():
    r = SkillScores(3).result()
    assert r["csi"].shape == (3, 5) and np.isnan(r["csi"]).all()
    assert r["mse"].shape == (3,) and np.isnan(r["mse"]).all()


def test_pooled_not_averaged():
    # sequence A: one pixel, a hit (CSI 1); sequence B: three misses (CSI 0).
    truth = np.zeros((1, 2, 1, 3))
    pred = np.zeros((1, 2, 1, 3))
    truth[0, 0, 0, 0] = pred[0, 0, 0, 0] = H
    truth[0, 1, 0, :] = H
    r = SkillScores(1, (5,)).update(pred, truth).result()
    assert r["csi"][0, 0] == pytest.approx(1 / 4)  # pooled 1 / (1 + 3), not mean(1, 0) = 0.5
    # the per-sequence sums are averaged over sequences: MSE = (0 + 3 * 0.36) / 2
    assert r["mse"][0] == pytest.approx(3 * H * H / 2)


def naive_reference(pred, truth, mask, thresholds_mm_h):
    """Per-threshold loops with explicit boolean tests; pred/truth/mask (T, B, H, W)."""
    T = pred.shape[0]
    counts = np.zeros((4, T, len(thresholds_mm_h)), dtype=np.int64)
    errs = np.zeros((4, T))
    for t in range(T):
        for b in range(pred.shape[1]):
            for i in range(pred.shape[2]):
                for j in range(pred.shape[3]):
                    if not mask[t, b, i, j]:
                        continue
                    p, o = pred[t, b, i, j], truth[t, b, i, j]
                    for k, thr in enumerate(thresholds_mm_h):
                        thr_px = np.float32(rainfall_to_pixel(thr))
                        pe, oe = p >= thr_px, o >= thr_px
                        counts[0 if pe and oe else 1 if oe else 2 if pe else 3, t, k] += 1
                    w = balanced_weights(np.array(o))
                    errs[:, t] += [(p - o) ** 2, abs(p - o), w * (p - o) ** 2, w * abs(p - o)]
    return counts, errs / pred.shape[1]


def random_batch(seed, shape=(3, 2, 6, 7)):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.2, 0.85, shape).astype(np.float32)
    pred = np.clip(truth + rng.normal(0, 0.08, shape), 0, 1).astype(np.float32)
    mask = rng.uniform(size=shape) > 0.2
    return pred, truth, mask


def test_random_batch_matches_naive_reference():
    pred, truth, mask = random_batch(0)
    thresholds = (0.5, 2, 5, 10, 30)
    r = SkillScores(3, thresholds).update(pred, truth, mask).result()
    counts, errs = naive_reference(pred, truth, mask, thresholds)
    for idx, name in enumerate(("tp", "fn", "fp", "tn")):
        np.testing.assert_array_equal(r[name], counts[idx], err_msg=name)
    assert (counts[0].sum(axis=0) > 0).all() and (
        counts[1].sum(axis=0) > 0
    ).all()  # events at every threshold
    for idx, name in enumerate(("mse", "mae", "b_mse", "b_mae")):
        np.testing.assert_allclose(r[name], errs[idx], rtol=1e-5, err_msg=name)


def test_merge_equals_single_accumulator():
    batches = [random_batch(seed) for seed in range(3)]
    single = SkillScores(3)
    parts = [SkillScores(3), SkillScores(3)]
    for n, (p, t, m) in enumerate(batches):
        single.update(p, t, m)
        parts[n % 2].update(p, t, m)
    merged = parts[0].merge(parts[1])
    assert merged.n_sequences == single.n_sequences == 6
    a, b = single.result(), merged.result()
    for key in a:
        np.testing.assert_allclose(
            np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), rtol=1e-12, err_msg=key
        )
    with pytest.raises(ValueError, match="cannot merge"):
        SkillScores(3).merge(SkillScores(4))
    with pytest.raises(ValueError, match="cannot merge"):
        SkillScores(3).merge(SkillScores(3, (0.5, 2)))


def test_numpy_and_torch_and_layouts_agree():
    pred, truth, mask = random_batch(1)
    ref = SkillScores(3).update(pred, truth, mask).result()
    variants = [
        (torch.from_numpy(pred), torch.from_numpy(truth), torch.from_numpy(mask)),
        (
            torch.from_numpy(pred)[:, :, None],
            torch.from_numpy(truth)[:, :, None],
            torch.from_numpy(mask)[:, :, None],
        ),
        (pred[:, :, None], truth[:, :, None], mask[:, :, None].astype(np.float32)),
        (torch.from_numpy(pred).double(), truth, mask),  # mixed kinds
    ]
    for p, t, m in variants:
        r = SkillScores(3).update(p, t, m).result()
        for key in ("tp", "fn", "fp", "tn"):
            np.testing.assert_array_equal(r[key], ref[key])
        for key in ("mse", "mae", "b_mse", "b_mae"):
            np.testing.assert_allclose(r[key], ref[key], rtol=1e-6)


def test_bf16_tensors_accepted():
    pred, truth, mask = random_batch(2)
    p16 = torch.from_numpy(pred).to(torch.bfloat16)
    t16 = torch.from_numpy(truth).to(torch.bfloat16)
    r = SkillScores(3).update(p16, t16, torch.from_numpy(mask)).result()
    ref = SkillScores(3).update(p16.float().numpy(), t16.float().numpy(), mask).result()
    np.testing.assert_array_equal(r["tp"], ref["tp"])
    np.testing.assert_allclose(r["b_mae"], ref["b_mae"], rtol=1e-6)


def test_non_contiguous_and_readonly_numpy():
    pred, truth, mask = random_batch(3)
    ref = SkillScores(3).update(pred, truth, mask).result()
    ro_truth = truth.copy()
    ro_truth.flags.writeable = False
    flipped = SkillScores(3).update(pred[:, :, ::-1, :], truth[:, :, ::-1, :], mask[:, :, ::-1, :]).result()
    r = SkillScores(3).update(pred, ro_truth, mask).result()
    np.testing.assert_array_equal(flipped["tp"], ref["tp"])
    np.testing.assert_array_equal(r["tp"], ref["tp"])


def test_input_errors():
    s = SkillScores(3)
    pred, truth, _ = random_batch(0)
    with pytest.raises(ValueError, match="lead times"):
        SkillScores(4).update(pred, truth)
    with pytest.raises(ValueError, match="shape"):
        s.update(pred[:, :, :5], truth)
    with pytest.raises(TypeError, match="255"):
        s.update((pred * 255).astype(np.uint8), truth)
    with pytest.raises(ValueError, match="one channel"):
        s.update(np.zeros((3, 1, 2, 4, 4), np.float32), np.zeros((3, 1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="increasing"):
        SkillScores(3, (5, 2))
    assert s.n_sequences == 0


def test_champion_score_and_json():
    pred, truth = hand_case()
    s = SkillScores(2).update(pred, truth)  # default thresholds (0.5, 2, 5, 10, 30)
    r = s.result()
    # CSI at 5 mm/h: frame 0 = 1/4, frame 1 undefined -> mean over defined lead times
    assert champion_score(r) == pytest.approx(1 / 4)
    js = s.to_json_dict()
    text = json.dumps(js, allow_nan=False)
    back = json.loads(text)
    assert back["csi"][1] == [None] * 5
    assert back["csi"][0][2] == pytest.approx(1 / 4)
    assert back["tp"][0][2] == 1 and back["n_sequences"] == 1 and back["seq_len"] == 2
    assert champion_score(back) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="5 mm/h"):
        champion_score(SkillScores(2, (0.5, 2)).update(pred, truth).result())
    assert math.isnan(champion_score(SkillScores(2).result()))


def test_summary_table_content():
    pred, truth = hand_case()
    table = SkillScores(2, (2, 5)).update(pred, truth).summary_table()
    assert isinstance(table, str)
    lines = table.splitlines()
    row2 = next(line for line in lines if line.strip().startswith("2 mm/h"))
    row5 = next(line for line in lines if line.strip().startswith("5 mm/h"))
    # CSI avg over lead times ignores the undefined frame; CSI at the last lead time is NaN
    assert row2.split("|")[1].split() == ["0.5000", "nan"]
    assert row5.split("|")[1].split() == ["0.2500", "nan"]
    assert row5.split("|")[2].split() == ["0.1429", "nan"]  # HSS
    assert row5.split("|")[3].split() == ["0.5000", "nan"]  # POD
    assert row5.split("|")[4].split() == ["0.6667", "nan"]  # FAR
    bmse = next(line for line in lines if line.strip().startswith("B-MSE"))
    assert bmse.split("|")[1].split() == ["0.14", "0"]  # avg of (0.28, 0) and last


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_value_exactly_at_threshold_is_an_event(dtype):
    thr_px = np.asarray(rainfall_to_pixel(np.array([2.0, 5.0])), dtype=dtype)
    below = np.nextafter(thr_px[1], dtype(0))
    truth = np.array([thr_px[1], below, thr_px[0], 0.0], dtype=dtype).reshape(1, 1, 1, 4)
    pred = np.array([thr_px[1], thr_px[1], below, thr_px[0]], dtype=dtype).reshape(1, 1, 1, 4)
    r = SkillScores(1, (2, 5)).update(pred, truth).result()
    # 2 mm/h: (t, p) = (1, 1) (1, 1) (1, 1) (0, 1); 5 mm/h: (1, 1) (0, 1) (0, 0) (0, 0)
    assert r["tp"][0].tolist() == [3, 1]
    assert r["fp"][0].tolist() == [1, 1]
    assert r["fn"][0].tolist() == [0, 0]
    assert r["tn"][0].tolist() == [0, 2]
    # balanced weights use the same ">=" rule: exactly 5 mm/h weighs 5, just below weighs 2
    np.testing.assert_array_equal(balanced_weights(truth).ravel(), [5, 2, 2, 1])
