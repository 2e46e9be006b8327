"""The small interface every forecast output format implements, and the forecast it writes.

An *output format* writes one :class:`Forecast` into a folder (a private staging folder of
``pipeline.files``; the caller renames what was written into place). Conventions shared by every
format:

- Forecast values are float pixel values in [0, 1] (the stored encoding, :data:`PIXEL_ENCODING`),
  (out_len, H, W); pixels outside the radar's coverage (where the last input frame's mask is false)
  are already 0 (:func:`Forecast.masked`), and a format that can say "missing" says so there.
- Times are ``int`` seconds since the Unix epoch, UTC; ``times_s`` is None when the input times are
  unknown (PNG inputs without HKO-7 names).
- A format writes only new files into the folder it is given: never through a symlink, never over an
  existing file (the staging folder is fresh).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.sources import PIXEL_ENCODING
from pipeline.store import Store


@dataclass
class Forecast:
    """One forecast and what the output formats need to describe it.

    forecast : float (out_len, H, W) pixel values in [0, 1].
    interval_s : seconds between forecast frames (the input cadence).
    last_time_s : time of the last input frame (the forecast reference time), or None when unknown.
    input_mask : bool (H, W) validity of the last input frame (True = valid), or None (all valid).
    model_uri, model_name : what produced it.
    store : the store the inputs came from (its grid and Z-R relation), or None for PNG inputs.
    inputs_u8, truth_u8, truth_masks, input_masks : the observed frames for the GIF (uint8 (S, H, W)
        and bool masks), truth over the forecast period when the store holds it.
    """

    forecast: np.ndarray
    interval_s: int
    last_time_s: int | None
    model_uri: str
    model_name: str
    input_mask: np.ndarray | None = None
    store: Store | None = None
    inputs_u8: np.ndarray | None = field(default=None, repr=False)
    input_masks: np.ndarray | None = field(default=None, repr=False)
    truth_u8: np.ndarray | None = field(default=None, repr=False)
    truth_masks: np.ndarray | None = field(default=None, repr=False)

    @property
    def out_len(self) -> int:
        return int(self.forecast.shape[0])

    @property
    def times_s(self) -> list[int] | None:
        """The out_len valid times (epoch seconds), or None when the input times are unknown."""
        if self.last_time_s is None:
            return None
        return [int(self.last_time_s + self.interval_s * (k + 1)) for k in range(self.out_len)]

    @property
    def lead_times_s(self) -> np.ndarray:
        """int64 (out_len,) seconds after the last input frame."""
        return self.interval_s * np.arange(1, self.out_len + 1, dtype=np.int64)

    def masked(self) -> Forecast:
        """This forecast with 0 where the last input frame's mask is false."""
        if self.input_mask is None:
            return self
        values = np.where(self.input_mask, self.forecast, 0.0).astype(self.forecast.dtype)
        return replace(self, forecast=values)

    def attrs(self) -> dict:
        """Metadata every format records (JSON-able)."""
        return {
            "model_uri": str(self.model_uri),
            "model_name": self.model_name,
            "interval_s": int(self.interval_s),
            "pixel_encoding": PIXEL_ENCODING,
            "issued_after_s": self.last_time_s,
        }


class OutputFormat:
    """One forecast output format. Subclass it, set :attr:`name` and implement :meth:`file_names`
    and :meth:`write`.

    name : registry key (``"netcdf"``), the value of ``--format``.
    """

    name: ClassVar[str] = ""

    def check(self, store: Store | None) -> None:
        """NowcastError, before any model loads, when this format cannot be written from these inputs
        (``store`` None: PNG inputs). Most formats can always be written."""

    def file_names(self, forecast: Forecast) -> list[str]:
        """The names :meth:`write` creates in its folder, in order."""
        raise NotImplementedError

    def write(self, folder: Path, forecast: Forecast) -> list[Path]:
        """Write ``forecast`` into ``folder`` (fresh, private) under :meth:`file_names`; -> the paths."""
        raise NotImplementedError

    def replaceable(self, path: Path) -> bool:
        """True when the folder ``path`` is an output this format wrote (the only folders replaced
        with ``overwrite``). Formats that write files only return False."""
        return False
