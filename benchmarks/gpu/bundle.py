"""Build the offline package bundle that the lent GPU machine needs to run the pipeline.

The lent GPU machine has no package index and takes at most 64 MiB of files per call (the git
working tree plus carried paths). Its Python 3.12 image already holds torch, triton, numpy, pandas,
pyarrow, scipy, opencv, h5py, matplotlib and more, but not Ray, MLflow, Zarr, Dask or the NetCDF/PROJ
stack. This script resolves the project's dependencies for CPython 3.12 on manylinux x86_64 (wheels
only), leaves out what the device image provides (``DEVICE_PROVIDED``), installs the rest into a
staging folder, prunes what training does not use (``PRUNE``: Ray's Java jars, RLlib, the dashboard's
web client, ...; sizes measured and recorded), strips Ray's native binaries of their symbol tables,
and packs the folder as ``benchmarks/gpu/bundle/site.tar.xz`` with ``manifest.json`` beside it.

    python benchmarks/gpu/bundle.py               # builds the bundle (needs the package index; ~3 min)
    python benchmarks/gpu/bundle.py --list        # prints the requirements, no network

On the device (what ``benchmarks/gpu/session.sh`` does)::

    mkdir -p /tmp/nowcast-site && tar -xJf benchmarks/gpu/bundle/site.tar.xz -C /tmp/nowcast-site
    export PYTHONPATH=$PWD:/tmp/nowcast-site

MLflow: ``mlflow-skinny`` + SQLAlchemy + Alembic is what SQLite tracking, the registry and pyfunc /
pt2 model logging need; the full ``mlflow`` wheel adds the tracking server's web UI, Flask, Gunicorn,
scikit-learn and Docker clients (sizes in the manifest's ``mlflow_full_extra_mib`` when measured with
``--measure-full-mlflow``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO / "benchmarks" / "gpu" / "bundle"
ARCHIVE_NAME = "site.tar.xz"
MANIFEST_NAME = "manifest.json"
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
#: The per-call limit of files carried to the device (working tree + carried paths).
CARRY_LIMIT_MIB = 64.0
#: Room kept for the working tree and what a session adds to it.
TREE_ROOM_MIB = 8.0

#: pyproject dependencies replaced for the bundle: the full ``mlflow`` wheel (web UI, server) by the
#: parts that SQLite tracking + registry + model logging use.
REPLACE = {"mlflow": ["mlflow-skinny=={version}", "sqlalchemy>=2", "alembic>=1.13"]}

#: Distributions the device image already holds (its package list, read on a machine running it,
#: 2026-11-17): left out of the bundle. Pure-Python dependencies are bundled even when the image has
#: them, so that their versions are the resolved ones; these are the big compiled ones (and what
#: torch needs), whose image versions the project accepts.
DEVICE_PROVIDED = frozenset(
    {
        "torch",
        "triton",
        "numpy",
        "pandas",
        "pyarrow",
        "scipy",
        "opencv-python-headless",
        "h5py",
        "matplotlib",
        "contourpy",
        "kiwisolver",
        "fonttools",
        "pillow",
        "cycler",
        "pyparsing",
        "python-dateutil",
        "six",
        "pyyaml",
        "psutil",
        "scikit-learn",
        "joblib",
        "threadpoolctl",
        "sympy",
        "mpmath",
        "networkx",
        "xarray",
        "pygments",
    }
)

#: Paths (relative to the site folder) that training, evaluation and the tests do not import.
PRUNE = (
    "ray/jars",  # Ray's Java worker
    "ray/rllib",
    "ray/llm",
    "ray/dashboard/client",  # the dashboard's web UI (no dashboard is started: no ray[default] deps)
    "ray/serve/_private/benchmarks",
    "bin",  # console scripts written for this machine's interpreter
)
#: Ray's native programs, stripped of their symbol tables (they stay executable); Python extension
#: modules (``*.so`` outside the ``*.libs`` folders of auditwheel's vendored libraries) are stripped too.
STRIP = ("ray/_raylet.so", "ray/core/src/ray/gcs/gcs_server", "ray/core/src/ray/raylet/raylet")
#: Modules the bundle must make importable on the device (with the image's packages).
MUST_IMPORT = (
    "ray",
    "ray.train",
    "ray.train.torch",
    "ray.tune",
    "mlflow",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "sqlalchemy",
    "alembic",
    "zarr",
    "numcodecs",
    "dask",
    "dask.distributed",
    "typer",
    "netCDF4",
    "cftime",
    "pyproj",
    "google_crc32c",
)


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return name.lower().replace("_", "-").replace(".", "-")


def requirement_name(req: str) -> str:
    """``'dask[distributed]==2026.8.0'`` -> ``'dask'``."""
    for sep in "[=<>!~; ":
        req = req.split(sep, 1)[0]
    return canonical(req)


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The bundle's top-level pip requirements: the project's runtime dependencies less those the device
    provides, with ``REPLACE`` applied (its ``{version}`` from the pyproject pin)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out: list[str] = []
    for dep in deps:
        name = requirement_name(dep)
        if name in DEVICE_PROVIDED:
            continue
        if name in REPLACE:
            version = dep.split("==", 1)[1] if "==" in dep else ""
            out += [r.format(version=version) for r in REPLACE[name]]
        else:
            out.append(dep)
    return out


def _pip_platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def resolve(reqs: list[str], workdir: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip resolves for ``reqs`` on the device's platform."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "resolve.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        + _pip_platform_args()
        + ["--target", str(workdir / "dry"), "--report", str(report), *reqs],
        check=True,
    )
    items = json.loads(report.read_text())["install"]
    return sorted((canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in items)


def install(pins: list[tuple[str, str]], site: Path) -> None:
    """Unpack the wheels of ``pins`` (no dependency resolution: the pins are the closure) into ``site``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
        + _pip_platform_args()
        + ["--target", str(site)]
        + [f"{name}=={version}" for name, version in pins],
        check=True,
    )


def tree_mib(path: Path) -> float:
    """Bytes under ``path`` (files only, links not followed), in MiB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def prune(site: Path) -> dict[str, float]:
    """Delete ``PRUNE`` paths and ``__pycache__`` folders under ``site`` (a folder this script created);
    returns the MiB removed per path."""
    removed: dict[str, float] = {}
    for rel in PRUNE:
        path = site / rel
        if path.exists() and not path.is_symlink():
            removed[rel] = round(tree_mib(path), 2)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    caches = [p for p in site.rglob("__pycache__") if p.is_dir()]
    removed["__pycache__"] = round(sum(tree_mib(p) for p in caches), 2)
    for p in caches:
        shutil.rmtree(p)
    return removed


def strip_binaries(site: Path) -> dict[str, float]:
    """``strip --strip-unneeded`` of Ray's native programs; returns MiB saved per file ({} without strip)."""
    if shutil.which("strip") is None:
        return {}
    saved = {}
    extensions = [
        p.relative_to(site).as_posix()
        for p in site.rglob("*.so")
        if p.is_file() and not p.is_symlink() and not any(part.endswith(".libs") for part in p.parts)
    ]
    for rel in dict.fromkeys([*STRIP, *extensions]):
        path = site / rel
        if path.is_file():
            before = path.stat().st_size
            subprocess.run(["strip", "--strip-unneeded", str(path)], check=True)
            saved[rel] = round((before - path.stat().st_size) / 2**20, 2)
    return {k: v for k, v in saved.items() if v >= 0.1}


def pack(site: Path, archive: Path) -> None:
    """``site``'s content as a .tar.xz (xz level 9, multithreaded when the tar/xz CLI is there)."""
    tmp = archive.with_suffix(".part")
    if shutil.which("tar") and shutil.which("xz"):
        env = {**os.environ, "XZ_OPT": "-9 -T0"}
        subprocess.run(["tar", "-C", str(site), "-cJf", str(tmp), "."], check=True, env=env)
    else:
        with tarfile.open(tmp, "w:xz", preset=9) as tar:
            tar.add(site, arcname=".")
    tmp.replace(archive)


def working_tree_mib() -> float:
    """What the device call carries besides the bundle: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    files = [REPO / f for f in out.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink()) / 2**20


def check_size(archive_mib: float, tree_mib_: float) -> str | None:
    """An error message when the bundle leaves less than ``TREE_ROOM_MIB`` of the carry limit."""
    if archive_mib + max(tree_mib_, TREE_ROOM_MIB) > CARRY_LIMIT_MIB:
        return (
            f"bundle {archive_mib:.1f} MiB + working tree {tree_mib_:.1f} MiB "
            f"(room kept: {TREE_ROOM_MIB} MiB) "
            f"exceeds the {CARRY_LIMIT_MIB:.0f} MiB carried per device call: prune more (PRUNE)"
        )
    return None


def build(out_dir: Path, measure_full_mlflow: bool) -> dict:
    """Build ``out_dir/site.tar.xz`` and ``out_dir/manifest.json``; returns the manifest."""
    t0 = time.monotonic()
    reqs = requirements()
    with tempfile.TemporaryDirectory(prefix="nowcast-bundle-") as tmp:
        work = Path(tmp)
        closure = resolve(reqs, work)
        pins = [(n, v) for n, v in closure if n not in DEVICE_PROVIDED]
        site = work / "site"
        install(pins, site)
        unpacked_mib = tree_mib(site)
        per_package = _top_level_mib(site)
        pruned = prune(site)
        stripped = strip_binaries(site)
        manifest = {
            "python": PYTHON_VERSION,
            "platforms": PLATFORMS,
            "requirements": reqs,
            "packages": {n: v for n, v in pins},
            "left_to_the_device": sorted(n for n, _ in closure if n in DEVICE_PROVIDED),
            "unpacked_mib_before_pruning": round(unpacked_mib, 1),
            "pruned_mib": pruned,
            "stripped_mib": stripped,
            "unpacked_mib": round(tree_mib(site), 1),
            "largest_top_level_mib": dict(sorted(per_package.items(), key=lambda kv: -kv[1])[:15]),
            "must_import": list(MUST_IMPORT),
        }
        (site / "nowcast_bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = out_dir / ARCHIVE_NAME
        pack(site, archive)
        if measure_full_mlflow:
            manifest["mlflow_full_extra_mib"] = _measure_full_mlflow(reqs, closure, work)
    manifest["archive_mib"] = round(archive.stat().st_size / 2**20, 2)
    manifest["working_tree_mib"] = round(working_tree_mib(), 2)
    manifest["build_s"] = round(time.monotonic() - t0, 1)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _top_level_mib(site: Path) -> dict[str, float]:
    return {p.name: round(tree_mib(p), 2) for p in site.iterdir() if not p.name.endswith(".dist-info")}


def _measure_full_mlflow(reqs: list[str], skinny_closure: list[tuple[str, str]], work: Path) -> dict:
    """Unpacked MiB of what the full ``mlflow`` wheel would add to the bundle, per distribution."""
    full_reqs = [r for r in reqs if requirement_name(r) not in ("mlflow-skinny", "sqlalchemy", "alembic")]
    pin = next(v for n, v in skinny_closure if n == "mlflow-skinny")
    full = resolve([*full_reqs, f"mlflow=={pin}"], work / "full")
    have = {n for n, _ in skinny_closure} | DEVICE_PROVIDED
    extra = [(n, v) for n, v in full if n not in have]
    site = work / "full-site"
    install(extra, site)
    sizes = {p.name: round(tree_mib(p), 2) for p in site.iterdir() if not p.name.endswith(".dist-info")}
    return {"total": round(tree_mib(site), 1), "distributions": [n for n, _ in extra], "largest": sizes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=BUNDLE_DIR, help=f"output folder (default {BUNDLE_DIR})")
    p.add_argument("--list", action="store_true", help="print the top-level requirements and exit")
    p.add_argument(
        "--measure-full-mlflow", action="store_true", help="also measure what full mlflow would add"
    )
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(requirements()))
        return 0
    manifest = build(args.out.resolve(), args.measure_full_mlflow)
    print(json.dumps({k: v for k, v in manifest.items() if k != "platforms"}, indent=1))
    archive = args.out / ARCHIVE_NAME
    print(
        f"bundle: {archive} {manifest['archive_mib']:.1f} MiB "
        f"({len(manifest['packages'])} distributions, {manifest['unpacked_mib']:.0f} MiB unpacked); "
        f"working tree {manifest['working_tree_mib']:.1f} MiB; carry limit {CARRY_LIMIT_MIB:.0f} MiB"
    )
    error = check_size(manifest["archive_mib"], manifest["working_tree_mib"])
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
