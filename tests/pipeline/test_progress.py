"""pipeline.progress: the one Rich progress bar."""

from __future__ import annotations

from pipeline.progress import progress_bar, track


def test_track_yields_every_item_enabled_or_not():
    assert list(track(range(5), "x", enabled=False)) == list(range(5))
    assert list(track(iter([1, 2]), "y", total=2, transient=True)) == [1, 2]


def test_progress_bar_advances():
    with progress_bar("z", 10, enabled=False) as advance:
        advance()
        advance(9)


def test_without_a_terminal_progress_is_plain_lines(capsys):
    """Piped (non-terminal) output gets one plain progress line per tenth, no blank lines of a live bar."""
    assert list(track(range(25), "evaluate persistence")) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("evaluate persistence: ") for line in lines)
    assert lines[-1] == "evaluate persistence: 25/25" and len(lines) <= 13
