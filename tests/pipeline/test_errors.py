"""pipeline.errors.Validated: the one config-validation style (types coerced or refused, then rules)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import MAX_INT, NowcastError, Validated


@dataclass(frozen=True)
class _Config(Validated):
    path: str | Path
    steps: int = 1
    rate: float = 0.5
    when: str | int | None = None
    thresholds: tuple[float, ...] = (0.5, 5.0)

    def rules(self):
        yield self.steps >= 1, f"steps must be >= 1, got {self.steps}"
        yield self.rate <= 1 / self.steps, "rate must be at most 1/steps"  # relies on the rule above


def test_fields_are_coerced_by_type_even_when_frozen():
    """Numeric text becomes a number, a whole float an int; a value of one of a union's types is kept."""
    cfg = _Config(Path("a"), steps="4", rate="1e-3", when="2015-06-01T00:00")
    assert (cfg.steps, cfg.rate, cfg.when) == (4, 0.001, "2015-06-01T00:00")
    assert (
        cfg.path == Path("a")
        and _Config("a", steps=2.0, when=7).steps == 2
        and _Config("a", when=7).when == 7
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(steps=2.5), "steps must be a whole number, got 2.5"),
        (dict(steps=True), "steps must be a number, got True"),
        (dict(steps=1e100), f"steps must be a whole number of at most {MAX_INT}"),
        (dict(rate=float("nan")), "rate must be a number, got nan"),
        (dict(steps=0), "steps must be >= 1, got 0"),
        (dict(steps=4, rate=0.5), "rate must be at most 1/steps"),
    ],
)
def test_bad_values_are_usage_errors_with_the_first_broken_rule(kw, message):
    with pytest.raises(NowcastError, match=message) as exc:
        _Config("a", **kw)
    assert exc.value.exit_code == 2
