"""The README's test section states why tests skip instead of pass/skip counts that go stale: every skip
reason written in the test suite is listed there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tests_section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("### The tests")
    return readme[start : readme.index("\n## ", start)]


def _skip_reasons() -> set[str]:
    """Every literal skip reason in tests/: ``reason="..."``, ``pytest.skip("...")`` (the text before an
    f-string's first field) and the module of ``pytest.importorskip("...")``."""
    found = set()
    for path in (REPO / "tests").rglob("*.py"):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        found |= set(re.findall(r'reason="([^"]+)"', text))
        found |= {m.split("{")[0].rstrip(": ") for m in re.findall(r'pytest\.skip\(f?"([^"]+)"', text)}
        found |= {f"`{m}`" for m in re.findall(r'importorskip\("([^"]+)"\)', text)}
    return found


def test_readme_lists_every_skip_reason_and_quotes_no_counts():
    section = _tests_section()
    assert not re.search(r"\d+ (passed|skipped)", section), "counts go stale: list skip reasons instead"
    reasons = _skip_reasons()
    assert "needs CUDA" in reasons  # the scan finds the suite's reasons
    missing = sorted(r for r in reasons if r not in section)
    assert not missing, f"README's test section does not say why these skip: {missing}"
