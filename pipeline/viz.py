"""Pictures a person would rather look at than read: skill-versus-lead-time plots, forecast GIFs,
and forecast frames written back as HKO-7 encoded PNGs.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, so the
process's matplotlib backend is left alone).
Frames handed to this module are float pixel values in [0, 1] (HKO-7 encoding,
``dBZ = 70 * pixel - 10``); pictures show rain rate in mm/h.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from PIL import Image

from pipeline import files
from pipeline.sources import get_source
from trajgru.metrics import DEFAULT_THRESHOLDS_MM_H
from trajgru.units import pixel_to_rainfall

#: Rain-rate bin edges in mm/h for the colour scale (as in the HKO-7 paper's figures).
RAIN_LEVELS_MM_H = (0.5, 2.0, 5.0, 10.0, 30.0, 50.0)
#: One colour per bin [0.5, 2), [2, 5), ... [30, 50), and one for >= 50 mm/h.
RAIN_COLORS = ("#9be7ff", "#3ca0ff", "#12c212", "#f4f400", "#ff9000", "#e00000", "#b000b0")
_MASKED_COLOR = "#b0b0b0"


def _figure(**kwargs) -> Figure:
    """A matplotlib Figure drawn on its own Agg canvas."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def rain_colormap(levels_mm_h: Sequence[float] = RAIN_LEVELS_MM_H):
    """Discrete colour scale for rain rate.

    Returns ``(cmap, norm)`` for ``imshow(rain_mm_h, cmap=cmap, norm=norm)``: values below
    ``levels_mm_h[0]`` are white (no rain), each bin ``[levels[i], levels[i+1])`` has one colour,
    values at or above the last level the last colour; masked pixels are grey.
    """
    levels = [float(v) for v in levels_mm_h]
    if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels_mm_h must be at least two ascending values, got {levels_mm_h}")
    n_bins = len(levels) - 1
    colors = list(RAIN_COLORS[:n_bins]) if n_bins <= len(RAIN_COLORS) - 1 else None
    if colors is None:
        raise ValueError(f"at most {len(RAIN_COLORS)} levels are supported")
    cmap = ListedColormap(colors, name="rain_mm_h").with_extremes(
        under="white", over=RAIN_COLORS[n_bins], bad=_MASKED_COLOR
    )
    norm = BoundaryNorm(levels, cmap.N)
    return cmap, norm


def pixel_to_u8(frames_pixel: np.ndarray) -> np.ndarray:
    """Float pixel values (any shape) -> stored uint8 ``round(255 * clamp(p, 0, 1))``; NaN -> 0."""
    p = np.nan_to_num(np.asarray(frames_pixel, dtype=np.float64), nan=0.0)
    return np.rint(255.0 * np.clip(p, 0.0, 1.0)).astype(np.uint8)


def png_names(n: int, times_s: Sequence[int] | None = None, names: Sequence[str] | None = None) -> list[str]:
    """The file names :func:`save_frames_png` gives ``n`` frames: ``RADyymmddHHMM00.png`` by time
    (the HKO-7 source's ``file_stem``), else ``names`` (stems), else ``forecast_01.png`` ..."""
    if times_s is not None:
        stems = [get_source("hko7").file_stem(int(t)) for t in times_s]
    elif names is not None:
        stems = [str(Path(s).stem) if str(s).endswith(".png") else str(s) for s in names]
    else:
        stems = [f"forecast_{i + 1:02d}" for i in range(n)]
    if len(stems) != n:
        raise ValueError(f"{n} frames but {len(stems)} names/times")
    if len(set(stems)) != n:
        raise ValueError("file names must be distinct")
    return [f"{stem}.png" for stem in stems]


def save_frames_png(
    frames_pixel: np.ndarray,
    out_dir: str | Path,
    times_s: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Write frames as HKO-7 encoded 8-bit grayscale PNGs (each under a temporary name, then renamed:
    never through a symlink).

    Parameters
    ----------
    frames_pixel : (S, H, W) float pixel values (clamped to [0, 1], stored as ``round(255 * p)``).
    out_dir : folder, created if needed.
    times_s, names : the file names, see :func:`png_names`.

    Returns the S paths in frame order.
    """
    frames = np.asarray(frames_pixel)
    if frames.ndim != 3:
        raise ValueError(f"frames_pixel must be (S, H, W), got shape {frames.shape}")
    out = Path(out_dir)
    u8 = pixel_to_u8(frames)
    return [
        files.write_bytes(out / name, get_source("hko7").encode_frame(np.ascontiguousarray(frame)))
        for name, frame in zip(png_names(frames.shape[0], times_s, names), u8)
    ]


def _threshold_values(result: dict, thresholds, n_thr: int) -> list[float]:
    if thresholds is None:
        thresholds = result.get("thresholds", DEFAULT_THRESHOLDS_MM_H)
    thr = [float(t) for t in thresholds]
    if len(thr) != n_thr:
        raise ValueError(f"scores hold {n_thr} thresholds but {len(thr)} threshold values were given")
    return thr


def _as_float_array(values) -> np.ndarray:
    """Nested lists (None for NaN, as in ``SkillScores.to_json_dict``) or arrays -> float ndarray."""
    return np.array(values, dtype=np.float64)


def plot_skill_vs_lead(
    result: dict,
    out_png: str | Path,
    interval_min: float = 6,
    thresholds: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """CSI and HSS versus lead time, one line per rain threshold, in two panels; saved as PNG.

    ``result`` is ``SkillScores.result()`` (or its ``to_json_dict()``): ``csi`` and ``hss`` are
    (T, n_thr) with lead time ``(t + 1) * interval_min`` minutes. Thresholds (mm/h) come from
    ``thresholds``, else ``result["thresholds"]``, else (0.5, 2, 5, 10, 30).
    """
    csi = _as_float_array(result["csi"])
    hss = _as_float_array(result["hss"])
    if csi.ndim != 2 or csi.shape != hss.shape:
        raise ValueError(f"csi and hss must both be (T, n_thr), got {csi.shape} and {hss.shape}")
    thr = _threshold_values(result, thresholds, csi.shape[1])
    lead_min = (np.arange(csi.shape[0]) + 1) * float(interval_min)
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharex=True)
    for ax, values, name in ((axes[0], csi, "CSI"), (axes[1], hss, "HSS")):
        for j, t in enumerate(thr):
            ax.plot(lead_min, values[:, j], marker="o", markersize=3, label=f"≥ {t:g} mm/h")
        ax.set_xlabel("lead time (min)")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return files.write_bytes(out_png, buf.getvalue())


def _frame_masks(mask, n_frames: int, shape: tuple[int, int]) -> list[np.ndarray | None]:
    """``mask`` (H, W) or (n_frames, H, W) bool (True = valid) or None -> one entry per frame."""
    if mask is None:
        return [None] * n_frames
    m = np.asarray(mask, dtype=bool)
    if m.shape == shape:
        return [m] * n_frames
    if m.shape == (n_frames, *shape):
        return list(m)
    raise ValueError(f"mask must be {shape} or {(n_frames, *shape)}, got {m.shape}")


def _to_rain(frame_pixel: np.ndarray, valid: np.ndarray | None) -> np.ma.MaskedArray:
    """(H, W) pixel -> rain rate mm/h, masked where ``valid`` is False."""
    rain = pixel_to_rainfall(np.clip(np.nan_to_num(np.asarray(frame_pixel, np.float64)), 0.0, 1.0))
    return np.ma.masked_array(rain, mask=None if valid is None else ~valid)


def _gif_schedule(s_in: int, s_out: int, interval_min: float) -> list[tuple[str, int, int]]:
    """One (label, input/truth index, phase) per GIF frame: observed frames, then forecasts."""
    sched = []
    for i in range(s_in):
        minutes = (s_in - 1 - i) * interval_min
        sched.append((f"observed  t-{minutes:g} min" if minutes else "observed  t0", i, 0))
    for j in range(s_out):
        sched.append((f"forecast  t+{(j + 1) * interval_min:g} min", j, 1))
    return sched


def forecast_gif(
    inputs: np.ndarray,
    truth: np.ndarray | None,
    forecast: np.ndarray,
    out_gif: str | Path,
    interval_min: float = 6,
    title: str = "",
    mask: np.ndarray | None = None,
    frame_ms: int = 400,
) -> Path:
    """Animated GIF: the observed input frames, then the forecast, in rain rate (mm/h).

    Parameters
    ----------
    inputs : (S_in, H, W) float pixel values of the observed frames (oldest first).
    truth : (S_out, H, W) observed frames over the forecast period, or None. When given, each GIF
        frame shows truth (left) beside forecast (right); during the input phase both panels show
        the observation.
    forecast : (S_out, H, W) float pixel values.
    mask : (H, W) or (S_in + S_out, H, W) bool, True = valid pixel; invalid pixels are grey.
    frame_ms : display time per GIF frame in milliseconds.

    Returns the GIF path; the GIF has ``S_in + S_out`` frames labelled with their lead time.
    """
    inputs = np.asarray(inputs)
    forecast = np.asarray(forecast)
    if inputs.ndim != 3 or forecast.ndim != 3:
        raise ValueError(f"inputs and forecast must be (S, H, W), got {inputs.shape} and {forecast.shape}")
    shape = inputs.shape[1:]
    if forecast.shape[1:] != shape:
        raise ValueError(f"frame size differs: inputs {shape}, forecast {forecast.shape[1:]}")
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != forecast.shape:
            raise ValueError(f"truth {truth.shape} must have the forecast's shape {forecast.shape}")
    s_in, s_out = inputs.shape[0], forecast.shape[0]
    masks = _frame_masks(mask, s_in + s_out, shape)
    cmap, norm = rain_colormap()

    n_panels = 1 if truth is None else 2
    fig = _figure(figsize=(3.6 * n_panels + 0.9, 4.0))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    blank = np.ma.masked_array(np.zeros(shape))
    images = []
    for ax in axes:
        images.append(ax.imshow(blank, cmap=cmap, norm=norm, interpolation="nearest"))
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(images[0], ax=list(axes), extend="both", fraction=0.046, pad=0.04)
    cbar.set_label("rain rate (mm/h)")
    label = fig.text(0.02, 0.02, "", fontsize=10, family="monospace")
    if title:
        fig.suptitle(title, fontsize=10)

    pictures = []
    for k, (text, idx, phase) in enumerate(_gif_schedule(s_in, s_out, interval_min)):
        valid = masks[k]
        if phase == 0:
            frames = [inputs[idx]] * n_panels
            names = ["observed"] * n_panels
        elif truth is None:
            frames, names = [forecast[idx]], ["forecast"]
        else:
            frames, names = [truth[idx], forecast[idx]], ["observed", "forecast"]
        for ax, im, frame, name in zip(axes, images, frames, names):
            im.set_data(_to_rain(frame, valid))
            ax.set_title(name, fontsize=10)
        label.set_text(text)
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        pictures.append(Image.fromarray(rgba[..., :3].copy(), mode="RGB"))
    buf = io.BytesIO()
    pictures[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=int(frame_ms),
        loop=0,
        disposal=1,
    )
    return files.write_bytes(out_gif, buf.getvalue())


__all__ = [
    "RAIN_LEVELS_MM_H",
    "rain_colormap",
    "pixel_to_u8",
    "png_names",
    "save_frames_png",
    "plot_skill_vs_lead",
    "forecast_gif",
]
