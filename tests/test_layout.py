"""The architecture's import rules (ARCHITECTURE.md, "Layout and who may import whom"), checked on the
source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = {
    "pipeline.train",
    "pipeline.evaluate",
    "pipeline.calibrate",
    "pipeline.predict",
    "pipeline.ingest",
    "pipeline.watch",
}


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST, nested_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import; ``nested_only``: only imports inside functions/classes."""
    found = []
    for node in ast.walk(tree):
        scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if nested_only and not isinstance(node, scopes):
            continue
        for sub in ast.walk(node) if nested_only else [node]:
            if isinstance(sub, ast.Import):
                found += [(alias.name, sub.lineno) for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                found += [(sub.module, sub.lineno)] + [
                    (f"{sub.module}.{a.name}", sub.lineno) for a in sub.names
                ]
    return found


@pytest.mark.parametrize("package", ["pipeline", "trajgru"])
def test_project_imports_are_at_module_top(package):
    nested = [
        (name, mod, line)
        for name, tree in _modules(package)
        for mod, line in _imports(tree, nested_only=True)
        if mod.split(".")[0] in ("pipeline", "trajgru")
    ]
    assert nested == []


def test_trajgru_never_imports_pipeline_and_pipeline_never_imports_cli():
    for name, tree in _modules("trajgru"):
        assert not [m for m, _ in _imports(tree) if m.split(".")[0] == "pipeline"], name
    for name, tree in _modules("pipeline"):
        assert not [m for m, _ in _imports(tree) if m.split(".")[0] == "cli"], name


#: The one allowed edge between stages: the watch service appends new files with ingest's own public
#: function (``pipeline.ingest.ingest``: the same lock, checksums and bad-file rules), not a copy of it.
ALLOWED = {("pipeline.watch", "pipeline.ingest")}


def test_no_stage_imports_another_stage():
    for name, tree in _modules("pipeline"):
        if name in STAGES:
            others = {m for m, _ in _imports(tree)} & (STAGES - {name})
            others = {m for m in others if (name, m) not in ALLOWED}
            assert not others, f"{name} imports {others}"


def test_ingest_knows_archives_only_through_the_sources_interface():
    formats = {
        f"pipeline.sources.{p.stem}"
        for p in (ROOT / "pipeline" / "sources").glob("*.py")
        if p.stem not in ("__init__", "base")
    }
    tree = dict(_modules("pipeline"))["pipeline.ingest"]
    assert formats and not {m for m, _ in _imports(tree)} & formats, "ingest imports a format module directly"


@pytest.mark.parametrize(
    "module",
    ["pipeline.predict", "pipeline.viz", "pipeline.synth", "pipeline.demo", "pipeline.outputs.netcdf"],
)
def test_stages_reach_archive_formats_through_the_sources_registry(module):
    """predict, viz, synth and demo use a format through ``pipeline.sources`` (``get_source``), never by
    importing the format's module."""
    from pipeline.sources import SOURCES

    formats = {type(source).__module__ for source in SOURCES.values()}
    tree = dict(_modules("pipeline"))[module]
    imported = {m for m, _ in _imports(tree)}  # from pipeline.sources import hko7: listed
    assert formats == {"pipeline.sources.hko7", "pipeline.sources.odim", "pipeline.sources.netcdf"}
    assert not imported & formats, f"{module} imports {imported & formats}"
