"""Recipe sweep for the skill benchmark: which training recipe makes TrajGRU beat optical flow?

A plain PyTorch loop (no Ray, MLflow, Zarr or Dask), so that it runs on a bare GPU machine. It uses
the project's own pieces: the synthetic weather (``pipeline.synth.simulate_day``, the exact frames
``nowcast synth`` writes), the day split of ``nowcast synth``, the HKO-7 clip rules
(``pipeline.catalog``), ``trajgru.build_model``, ``trajgru.losses.BalancedLoss``,
``trajgru.metrics.SkillScores`` and the baselines. Every recipe trains in its own process (several
share one GPU), is validated every ``--val-every`` steps on the validation days, and keeps its best
validated weights; those are scored once on the test days.

    python benchmarks/skill_sweep.py --out sweep --days 120 --size 96 --seed 7 --minutes 5

Writes ``OUT/<recipe>.json`` (curve, best step, test scores) and ``OUT/baselines.json``, and prints
one table. Recipes are chosen on the validation columns only; the test columns are reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import catalog, synth  # noqa: E402
from trajgru import build_model  # noqa: E402
from trajgru.baselines import optical_flow, persistence  # noqa: E402
from trajgru.fast import CapturedTrainStep, enable_fast_path, fused_adam  # noqa: E402
from trajgru.losses import BalancedLoss  # noqa: E402
from trajgru.metrics import SkillScores  # noqa: E402

IN_LEN, OUT_LEN = 5, 20
SEQ_LEN = IN_LEN + OUT_LEN
INTERVAL_S = 360

WIDE = dict(filters=(64, 96), flow_channels=32)
MID = dict(filters=(32, 64), flow_channels=16)
#: name -> recipe. schedule "cosine": linear warm-up over warmup_frac of the steps, then cosine
#: decay to min_lr_frac * lr; "const": constant lr. aug: random dihedral transform of each clip.
RECIPES = {
    "tiny_const": dict(cell="trajgru", model={}, lr=1e-3, schedule="const", aug=False),
    "tiny_cos": dict(cell="trajgru", model={}, lr=1e-3, schedule="cosine", aug=False),
    "tiny_cos_aug": dict(cell="trajgru", model={}, lr=1e-3, schedule="cosine", aug=True),
    "mid_cos_aug": dict(cell="trajgru", model=MID, lr=1e-3, schedule="cosine", aug=True),
    "wide_cos_aug": dict(cell="trajgru", model=WIDE, lr=1e-3, schedule="cosine", aug=True),
    "convgru_wide_cos_aug": dict(
        cell="convgru", model=dict(filters=(64, 96)), lr=1e-3, schedule="cosine", aug=True
    ),
    "convlstm_wide_cos_aug": dict(
        cell="convlstm", model=dict(filters=(64, 96)), lr=1e-3, schedule="cosine", aug=True
    ),
    "tiny_cos_aug_lr3e-3": dict(cell="trajgru", model={}, lr=3e-3, schedule="cosine", aug=True),
    # the second GPU run: the `tiny` recipe (pipeline.train.RECIPES) at equal steps per cell, without
    # augmentation, and as long as the time allows on the fast path (Triton kernels + one CUDA graph per step)
    "trajgru_2k": dict(cell="trajgru", model={}, lr=1e-3, schedule="cosine", aug=True, steps=2000),
    "trajgru_noaug_2k": dict(cell="trajgru", model={}, lr=1e-3, schedule="cosine", aug=False, steps=2000),
    "convgru_2k": dict(cell="convgru", model={}, lr=1e-3, schedule="cosine", aug=True, steps=2000),
    "convlstm_2k": dict(cell="convlstm", model={}, lr=1e-3, schedule="cosine", aug=True, steps=2000),
    "trajgru_graph": dict(
        cell="trajgru", model={}, lr=1e-3, schedule="cosine", aug=True, fast=True, graph=True
    ),
    "convgru_graph": dict(
        cell="convgru", model={}, lr=1e-3, schedule="cosine", aug=True, fast=True, graph=True
    ),
    # what `nowcast demo` can afford on 2 CPU cores (run with --days 8 --seed 0, the demo's archive)
    "demo_b8_600": dict(cell="trajgru", model={}, lr=2e-3, schedule="cosine", aug=True, batch=8, steps=600),
}


# ------------------------------------------------------------------------------------------- data
def _simulate(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, day, size = args
    clutter = synth.clutter_mask(size, seed)
    frames, masks, present = [], [], []
    for fr in synth.simulate_day(seed, day, synth.SLOTS_PER_DAY, size, 0.01, clutter):
        frames.append(np.zeros((size, size), np.uint8) if fr.missing else synth.stored_pixels(fr))
        masks.append(np.zeros((size, size), bool) if fr.missing else fr.mask)
        present.append(not fr.missing)
    return np.stack(frames), np.stack(masks), np.asarray(present)


def make_data(seed: int, days: int, size: int, start: str, path: Path) -> None:
    """Simulate the archive ``nowcast synth --seed --days --size --start`` would write, as arrays.

    Saves frames uint8 (T, H, W), masks bool (T, H, W), present bool (T,), time_s int64 (T,) on the
    6-minute slot axis, and the synth day split, to ``path`` (.npz, uncompressed)."""
    day_list = [np.datetime64(start, "D") + i for i in range(days)]
    with ProcessPoolExecutor(min(os.cpu_count() or 1, days)) as pool:
        parts = list(pool.map(_simulate, [(seed, d, size) for d in day_list]))
    t0 = int(day_list[0].astype("datetime64[s]").astype(np.int64))
    n = days * synth.SLOTS_PER_DAY
    split = catalog.split_days_by_fraction(day_list, synth.VALID_FRACTION, synth.TEST_FRACTION)
    np.savez(
        path,
        frames=np.concatenate([p[0] for p in parts]),
        masks=np.concatenate([p[1] for p in parts]),
        present=np.concatenate([p[2] for p in parts]),
        time_s=t0 + INTERVAL_S * np.arange(n, dtype=np.int64),
        **{f"days_{k}": np.asarray(v, dtype="datetime64[D]") for k, v in split.items()},
    )


def clip_slots(data, split: str, protocol: str) -> np.ndarray:
    """Slot indices of the clip starts of a split (catalog rules of the store)."""
    t = data["time_s"]
    ok = data["present"] & np.isin(t.astype("datetime64[s]").astype("datetime64[D]"), data[f"days_{split}"])
    times = t[ok].astype("datetime64[s]")
    fn = catalog.valid_clip_starts if protocol == "random" else catalog.sequent_clips
    starts = fn(times, SEQ_LEN) if protocol == "random" else fn(times, SEQ_LEN, catalog.STRIDE)
    return ((starts.astype("datetime64[s]").astype(np.int64) - t[0]) // INTERVAL_S).astype(np.int64)


def gather(frames_u8, masks, slots, device):
    """Clips at slot starts -> frames float (S, B, 1, H, W) in [0, 1], masks bool, on device."""
    idx = torch.as_tensor(slots, device=frames_u8.device)[:, None] + torch.arange(
        SEQ_LEN, device=frames_u8.device
    )
    f = frames_u8[idx].to(device=device, dtype=torch.float32).div_(255.0)
    m = masks[idx].to(device)
    return f.transpose(0, 1).unsqueeze(2), m.transpose(0, 1).unsqueeze(2)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two axes (k in 0..7)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


# ---------------------------------------------------------------------------------------- scoring
def summarise(skill: SkillScores) -> dict:
    r = skill.result()
    thr = [float(t) for t in r["thresholds"]]
    return {
        "csi": {f"{t:g}": float(np.nanmean(r["csi"][:, i])) for i, t in enumerate(thr)},
        "hss": {f"{t:g}": float(np.nanmean(r["hss"][:, i])) for i, t in enumerate(thr)},
        "b_mse": float(np.nanmean(r["b_mse"])),
        "b_mae": float(np.nanmean(r["b_mae"])),
        "csi5_by_lead": [float(v) for v in r["csi"][:, thr.index(5.0)]],
        "n_clips": int(r["n_sequences"]),
    }


@torch.no_grad()
def score(forecast, frames_u8, masks, slots, device, batch=64) -> dict:
    skill = SkillScores(OUT_LEN)
    for lo in range(0, len(slots), batch):
        f, m = gather(frames_u8, masks, slots[lo : lo + batch], device)
        pred = forecast(f[:IN_LEN]).float().clamp(0, 1)
        skill.update(pred, f[IN_LEN:].contiguous(), m[IN_LEN:].contiguous())
    return summarise(skill)


# --------------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, recipe: dict) -> float:
    base = recipe["lr"]
    if recipe["schedule"] == "const":
        return base
    warm = max(1, int(recipe.get("warmup_frac", 0.05) * total))
    if step <= warm:
        return base * step / warm
    progress = (step - warm) / max(1, total - warm)
    floor = recipe.get("min_lr_frac", 0.01)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _set_lr(opt, value: float) -> None:
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(value)  # capturable Adam (CUDA graph): a device tensor
        else:
            g["lr"] = value


def train_recipe(args) -> dict:
    """Train one recipe until its steps are done or ``deadline_s`` (wall, from the start) has passed;
    validate every ``val_every`` steps, keep the best weights, score them (and the last) on the test days."""
    name, recipe, data_path, out_dir, minutes, val_every, seed, max_steps, deadline_s = args
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(2 if device.type == "cuda" else max(1, (os.cpu_count() or 2)))
    data = dict(np.load(data_path))
    frames_u8 = torch.from_numpy(data["frames"]).to(device)
    masks = torch.from_numpy(data["masks"]).to(device)
    train_slots = clip_slots(data, "train", "random")
    val_slots = clip_slots(data, "valid", "sequent")
    test_slots = clip_slots(data, "test", "sequent")
    size = data["frames"].shape[-1]
    model = build_model("tiny", recipe["cell"], height=size, width=size, **recipe["model"]).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    fast = recipe.get("fast", False) and device.type == "cuda"
    if fast:
        enable_fast_path(model)
        opt = fused_adam(model.parameters(), lr=recipe["lr"], betas=(recipe.get("beta1", 0.9), 0.999))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"], betas=(recipe.get("beta1", 0.9), 0.999))
    loss_fn = BalancedLoss()
    batch = recipe.get("batch", 16)
    rng = np.random.default_rng(seed)
    amp = device.type == "cuda"

    def forecast(x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return model(x)

    def sample():
        f, m = gather(frames_u8, masks, rng.choice(train_slots, batch), device)
        if recipe["aug"]:
            k = int(rng.integers(8))
            f, m = dihedral(f, k), dihedral(m, k)
        return f[:IN_LEN].contiguous(), f[IN_LEN:].contiguous(), m[IN_LEN:].contiguous()

    captured = None
    if fast and recipe.get("graph"):
        captured = CapturedTrainStep(model, opt, loss_fn, sample(), clip_norm=recipe.get("clip", 50.0))
        print(f"[{name}] CUDA graph: {captured.graphed} ({captured.fallback_reason})", flush=True)

    def one_step(step, total):
        _set_lr(opt, lr_at(step, total, recipe))
        x, y, m = sample()
        if captured is not None:
            return captured.step(x, y, m)[0].clone()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forecast(x).float(), y, m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.get("clip", 50.0))
        opt.step()
        return loss.detach()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    total, start = recipe.get("steps"), 1
    if total is None:  # calibrate: steps that fit the time budget at the speed of steps 11-30
        for s in range(1, 31):
            if s == 11:
                sync()
                t_cal = time.perf_counter()
            one_step(s, 10**9)
        sync()
        per_step = (time.perf_counter() - t_cal) / 20
        total = max(100, int((minutes * 60 - (time.perf_counter() - t0)) * 0.8 / per_step))
        start = 31
    if max_steps:
        total = max(min(total, max_steps), start)
    curve, best, losses = [], {"csi5": -1.0, "step": 0, "state": None, "val": None}, []
    last_step = start - 1
    for step in range(start, total + 1):
        losses.append(one_step(step, total))
        last_step = step
        out_of_time = deadline_s is not None and time.perf_counter() - t0 > deadline_s
        if step % val_every == 0 or step == total or out_of_time:
            model.eval()
            val = score(forecast, frames_u8, masks, val_slots, device)
            model.train()
            recent = float(torch.stack(losses[-val_every:]).mean())
            curve.append(
                {
                    "step": step,
                    "loss": recent,
                    "val_csi5": val["csi"]["5"],
                    "val_b_mse": val["b_mse"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"[{name}] step {step}/{total} loss {curve[-1]['loss']:.4f} val CSI5 {val['csi']['5']:.4f} "
                f"B-MSE {val['b_mse']:.1f}",
                flush=True,
            )
            if val["csi"]["5"] > best["csi5"]:
                best = {
                    "csi5": val["csi"]["5"],
                    "step": step,
                    "state": copy.deepcopy(model.state_dict()),
                    "val": val,
                }
        if out_of_time:
            print(f"[{name}] deadline: stopped at step {step} of {total}", flush=True)
            break
    final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best["state"])
    model.eval()
    test_best = score(forecast, frames_u8, masks, test_slots, device)
    model.load_state_dict(final_state)
    test_final = score(forecast, frames_u8, masks, test_slots, device)
    out = {
        "name": name,
        "recipe": recipe,
        "params": n_params,
        "steps": last_step,
        "planned_steps": total,
        "batch": batch,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
        "graphed": bool(captured is not None and captured.graphed),
        "curve": curve,
        "best_step": best["step"],
        "val_best": best["val"],
        "test_best": test_best,
        "test_final": test_final,
    }
    Path(out_dir, f"{name}.json").write_text(json.dumps(out, indent=1))
    return out


def _baseline_chunk(args):
    data_path, slots, which = args
    data = np.load(data_path)
    frames_u8, masks = torch.from_numpy(data["frames"]), torch.from_numpy(data["masks"])
    fn = persistence if which == "persistence" else optical_flow
    skill = SkillScores(OUT_LEN)
    for lo in range(0, len(slots), 16):
        f, m = gather(frames_u8, masks, slots[lo : lo + 16], "cpu")
        skill.update(fn(f[:IN_LEN], OUT_LEN).float().clamp(0, 1), f[IN_LEN:], m[IN_LEN:])
    return skill


def baselines(data_path: Path, out_dir: Path, workers: int) -> dict:
    data = dict(np.load(data_path))
    out = {}
    with ProcessPoolExecutor(workers) as pool:
        for split in ("valid", "test"):
            slots = clip_slots(data, split, "sequent")
            for which in ("persistence", "optical_flow"):
                parts = list(
                    pool.map(
                        _baseline_chunk,
                        [(data_path, c, which) for c in np.array_split(slots, workers) if len(c)],
                    )
                )
                total = parts[0]
                for p in parts[1:]:
                    total.merge(p)
                out[f"{which}_{split}"] = summarise(total)
    Path(out_dir, "baselines.json").write_text(json.dumps(out, indent=1))
    return out


def table(out_dir: Path) -> str:
    rows = [
        "| recipe | params | steps | best step | val CSI≥5 | test CSI≥5 (best) | test B-MSE | test CSI≥5 (last) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = (
        json.loads(Path(out_dir, "baselines.json").read_text())
        if Path(out_dir, "baselines.json").exists()
        else {}
    )
    for which in ("persistence", "optical_flow"):
        if f"{which}_test" in base:
            v, t = base[f"{which}_valid"], base[f"{which}_test"]
            rows.append(
                f"| {which} | – | – | – | {v['csi']['5']:.4f} | {t['csi']['5']:.4f} | {t['b_mse']:.1f} | – |"
            )
    for path in sorted(Path(out_dir).glob("*.json")):
        if path.name == "baselines.json":
            continue
        r = json.loads(path.read_text())
        rows.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['best_step']} | "
            f"{r['val_best']['csi']['5']:.4f} | {r['test_best']['csi']['5']:.4f} | "
            f"{r['test_best']['b_mse']:.1f} | {r['test_final']['csi']['5']:.4f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start", default="2015-06-01")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-time budget per recipe")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--parallel", type=int, default=8, help="recipes trained at once")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per recipe (quick checks)")
    p.add_argument(
        "--no-baselines", action="store_true", help="skip persistence / optical flow (known already)"
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="every recipe stops training this many seconds after its start, then scores",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data_path = args.out / "data.npz"
    t0 = time.perf_counter()
    make_data(args.seed, args.days, args.size, args.start, data_path)
    print(f"data: {args.days} days of {args.size}px in {time.perf_counter() - t0:.1f} s", flush=True)
    names = args.recipes.split(",")
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(args.parallel, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                train_recipe,
                (
                    n,
                    RECIPES[n],
                    data_path,
                    args.out,
                    args.minutes,
                    args.val_every,
                    0,
                    args.max_steps,
                    args.deadline_s,
                ),
            )
            for n in names
        ]
        if not args.no_baselines:
            base = baselines(data_path, args.out, max(1, (os.cpu_count() or 2) // 2))
            print(json.dumps({k: (v["csi"]["5"], v["b_mse"]) for k, v in base.items()}), flush=True)
        for f in futures:
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 (report and go on)
                print(f"recipe failed: {exc!r}", flush=True)
    data_path.unlink()
    print(table(args.out))


if __name__ == "__main__":
    main()
