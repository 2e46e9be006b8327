"""Configuration of ``nowcast train``: the options (:class:`TrainConfig`), the recipes that fill the
options left unset (:data:`RECIPES`), config files, and the learning-rate schedule of a recipe."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import tracking
from pipeline.errors import NowcastError, Validated, name_rule
from trajgru.model import PRESETS

#: Training recipes: the values of the TrainConfig fields left None. A run uses the recipe named by
#: ``--recipe``, by default its preset's (:data:`PRESET_RECIPES`). Evidence for each is in the README
#: ("Recipes") and benchmarks/results/.
#:
#: - "hko7-paper": the paper's recipe (Shi et al. 2017): global batch 4, Adam lr 1e-4 (beta1 0.5), clip
#:   50, lr x0.7 every 20k iterations down to 1e-6, 100k iterations, no augmentation.
#: - "tiny": chosen from measured runs (README, "Skill"): batch 16, Adam lr 1e-3 (beta1 0.9) with a
#:   linear warm-up over 5% of the steps and a cosine decay to 1e-5, and random dihedral augmentation
#:   (flips and 90-degree turns of whole clips).
#: - "tiny-demo": `nowcast demo`: the tiny recipe shortened to what 2 CPU cores train in about 5 minutes.
RECIPES: dict[str, dict[str, Any]] = {
    "hko7-paper": dict(
        steps=100_000,
        batch_size=4,
        lr=1e-4,
        beta1=0.5,
        lr_schedule="step",
        warmup_steps=0,
        lr_decay_every=20_000,
        min_lr=1e-6,
        augment=False,
        checkpoint_every=5_000,
        val_every=5_000,
        val_clips=256,
        log_every=50,
        early_stop_patience=0,
    ),
    "tiny": dict(
        steps=3_000,
        batch_size=16,
        lr=1e-3,
        beta1=0.9,
        lr_schedule="cosine",
        warmup_steps=150,
        lr_decay_every=20_000,
        min_lr=1e-5,
        augment=True,
        checkpoint_every=250,
        val_every=250,
        val_clips=256,
        log_every=50,
        early_stop_patience=0,
    ),
}
RECIPES["tiny-demo"] = dict(
    RECIPES["tiny"],
    steps=400,
    batch_size=8,
    lr=2e-3,
    warmup_steps=20,
    checkpoint_every=100,
    val_every=100,
    val_clips=64,
    log_every=20,
)
#: The recipe each model preset (:data:`trajgru.model.PRESETS`) trains with unless ``--recipe`` says
#: otherwise.
PRESET_RECIPES: dict[str, str] = {"tiny": "tiny", "hko7": "hko7-paper", "mnist++": "hko7-paper"}
LR_SCHEDULES = ("step", "cosine")
#: The most steps a run may be given (a bound that catches typos such as ``steps: 1e100``).
MAX_STEPS = 10**9


@dataclass
class TrainConfig(Validated):
    """Options of ``nowcast train``; fields left None take the recipe's value (:data:`RECIPES`;
    ``recipe`` None = the preset's, :data:`PRESET_RECIPES`).

    Paths may be relative here: :meth:`resolved` makes them absolute before Ray sees them.
    Values are checked on construction (:class:`pipeline.errors.Validated`: NowcastError, exit code 2);
    None fields are checked once :meth:`resolved` fills them in.
    """

    store: str
    preset: str = "tiny"
    cell: str = "trajgru"
    workers: int = 2
    use_gpu: bool = False
    recipe: str | None = None  # a key of RECIPES (None: PRESET_RECIPES[preset])
    steps: int | None = None
    batch_size: int | None = None  # global batch (split evenly over workers)
    lr: float | None = None  # peak learning rate
    beta1: float | None = None
    clip_norm: float = 50.0  # global gradient norm
    lr_schedule: str | None = None  # "step" (x lr_decay every lr_decay_every) or "cosine" (to min_lr)
    warmup_steps: int | None = None  # linear warm-up from 0 to lr
    lr_decay: float = 0.7
    lr_decay_every: int | None = None  # steps
    min_lr: float | None = None
    augment: bool | None = None  # random flips / 90-degree turns of each training clip
    early_stop_patience: int | None = None  # stop after N validations without improvement (0: never)
    mse_weight: float = 1.0
    mae_weight: float = 1.0
    checkpoint_every: int | None = None  # steps
    val_every: int | None = None  # steps (0 = only at the end)
    val_clips: int | None = None  # cap on sequential validation clips
    log_every: int | None = None  # steps between console/MLflow step metrics
    gif_clips: int = 2  # validation clips drawn as GIFs
    run_name: str | None = None
    storage_path: str | None = None  # default ./ray_results
    ray_address: str | None = None  # default env RAY_ADDRESS, else a local cluster
    tracking_uri: str | None = None
    experiment: str = "nowcast"
    register_as: str | None = None
    seed: int = 0
    height: int | None = None  # must match the store's frames if given
    width: int | None = None
    in_len: int | None = None  # model override (preset default otherwise)
    out_len: int | None = None
    max_failures: int = 2
    num_dataloader_workers: int = 0
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    model_format: str | None = None  # MLflow model: "pt2", "pickle", None = pt2 else pickle
    fast_path: bool = True  # trajgru.fast: fused kernels + channels-last (GPU), channels-last (CPU)
    force: bool = False  # resume a run name on a store other than the one it started on

    def rules(self):
        yield self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
        yield (
            self.recipe is None or self.recipe in RECIPES,
            f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}",
        )
        yield self.workers >= 1, f"--workers must be >= 1, got {self.workers}"
        yield name_rule(self.run_name, "--run-name")
        yield name_rule(self.register_as, "--register-as")
        at_least_1 = ("steps", "batch_size", "checkpoint_every", "lr_decay_every", "log_every", "val_clips")
        for name in (*at_least_1, "height", "width", "in_len", "out_len"):
            value = getattr(self, name)
            yield value is None or value >= 1, f"{name} must be >= 1, got {value}"
        for name in (*at_least_1, "warmup_steps", "val_every", "early_stop_patience"):
            value = getattr(self, name)
            if value is not None:
                yield value <= MAX_STEPS, f"{name} must be at most {MAX_STEPS:,}, got {value:,}"
        for name in (
            "warmup_steps",
            "early_stop_patience",
            "val_every",
            "gif_clips",
            "max_failures",
            "num_dataloader_workers",
            "mse_weight",
            "mae_weight",
            "seed",
        ):
            value = getattr(self, name)
            yield value is None or value >= 0, f"{name} must be >= 0, got {value}"
        yield self.clip_norm > 0, f"clip_norm must be > 0, got {self.clip_norm}"
        yield (
            self.system_metrics_interval_s > 0,
            f"system_metrics_interval_s must be > 0, got {self.system_metrics_interval_s}",
        )
        yield self.mse_weight + self.mae_weight > 0, "mse_weight and mae_weight cannot both be 0"
        yield (
            self.model_format in (None, "pt2", "pickle"),
            f"model_format must be pt2 or pickle, got {self.model_format!r}",
        )
        yield (
            self.lr_schedule is None or self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        yield self.beta1 is None or 0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1}"
        yield self.min_lr is None or self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}"
        yield (
            self.batch_size is None or self.batch_size % self.workers == 0,
            f"global batch size {self.batch_size} must be a multiple of --workers {self.workers}",
        )
        yield self.lr is None or self.lr > 0, f"learning rate must be > 0, got {self.lr}"
        yield 0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"

    def resolved(self) -> TrainConfig:
        """A copy with preset defaults filled in, absolute paths and a run name (checked again)."""
        values = dataclasses.asdict(self)
        values["recipe"] = self.recipe or PRESET_RECIPES[self.preset]
        for key, default in RECIPES[values["recipe"]].items():
            if values[key] is None:
                values[key] = default
        values["store"] = str(Path(self.store).expanduser().resolve())
        values["storage_path"] = str(Path(self.storage_path or "ray_results").expanduser().resolve())
        values["ray_address"] = self.ray_address or os.environ.get("RAY_ADDRESS") or None
        values["tracking_uri"] = tracking.resolve_tracking_uri(self.tracking_uri)
        if not values["run_name"]:
            preset = re.sub(r"[^A-Za-z0-9_.-]", "", self.preset)  # a safe name: mnist++ -> mnist
            values["run_name"] = f"{preset}-{self.cell}-{time.strftime('%Y%m%d-%H%M%S')}"
        return TrainConfig(**values)

    def model_overrides(self) -> dict[str, int]:
        """ModelConfig overrides given by this config (height, width, in_len, out_len)."""
        names = ("height", "width", "in_len", "out_len")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read TrainConfig overrides from a YAML or JSON file (a flat mapping of field names).

    Unknown keys raise NowcastError (exit code 2) naming the valid ones.
    """
    path = Path(path)
    if not path.exists():
        raise NowcastError(f"config file {path} does not exist", exit_code=2)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise NowcastError(f"cannot parse config file {path}: {_parse_problem(exc)}", exit_code=2) from None
    data = data or {}
    if not isinstance(data, dict):
        raise NowcastError(f"config file {path} must hold a mapping of option: value", exit_code=2)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NowcastError(
            f"unknown option(s) {unknown} in {path}; valid: {', '.join(sorted(known))}", exit_code=2
        )
    return data


def _parse_problem(exc: yaml.YAMLError | json.JSONDecodeError) -> str:
    """One line: the parser's problem and where it is (1-based line and column, when known)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return problem if mark is None else f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def lr_factor(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    min_lr: float,
    decay: float = 0.7,
    decay_every: int = 20_000,
) -> float:
    """Multiplier of the peak learning rate ``base_lr`` for the optimizer step that follows ``step``
    completed steps (``LambdaLR``'s argument).

    - warm-up: ``(step + 1) / warmup_steps`` while ``step < warmup_steps``;
    - "step" (HKO-7): ``max(decay ** (step // decay_every), min_lr / base_lr)``;
    - "cosine": from 1 after the warm-up down to ``min_lr / base_lr`` at ``total_steps``,
      ``f + (1 - f) (1 + cos(pi p)) / 2`` with ``f = min_lr / base_lr`` and p the fraction of the
      post-warm-up steps done.
    """
    floor = min_lr / base_lr
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return max(decay ** (step // decay_every), floor)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
