"""The package installs from what the Docker images copy, and works without the source tree.

The test copies exactly the files the Dockerfiles `COPY` into an empty folder, builds the wheel there with the
same `pip install .` step the images run (as `pip wheel . --no-deps`), installs it into an empty folder,
and then, in a fresh interpreter whose path holds neither the source tree nor the editable install's finder:
imports every module of the wheel (each must load from the install), and runs the installed `nowcast --help`.
It also checks that every package folder of the source tree (a folder with an `__init__.py`) is in the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = (ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda")
TOP_PACKAGES = ("trajgru", "pipeline")

# Run in the fresh interpreter: drop the editable install's finder (its .pth appends it to sys.meta_path, and
# it would serve any module the wheel lacks from the source tree), then import every module named on argv.
_IMPORT_ALL = """
import importlib, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
files = {}
for name in sys.argv[1:]:
    files[name] = importlib.import_module(name).__file__
print(json.dumps(files))
"""

# Run the installed console script the same way (the editable finder dropped first).
_RUN_SCRIPT = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
script = sys.argv[1]
sys.argv = ["nowcast", *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def _dockerfile_steps(dockerfile: Path) -> tuple[list[list[str]], list[str]]:
    """The COPY sources (build-context paths, `--chown` dropped) and the words of the `pip install .` line."""
    copies, install = [], None
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["COPY"]:
            copies.append([w for w in words[1:-1] if not w.startswith("--")])
        elif words[:1] == ["RUN"] and "pip install ." in line:
            install = words
    assert install is not None, f"{dockerfile.name} has no `pip install .` step"
    return copies, install


def test_dockerfiles_install_the_project_with_pip_install_dot():
    """Both images install the project with `pip install .` from the folder the project files were copied to,
    which is what test_wheel_installs_and_imports_without_the_source_tree builds."""
    for dockerfile in DOCKERFILES:
        copies, install = _dockerfile_steps(dockerfile)
        assert install[1:4] == ["pip", "install", "."], f"{dockerfile.name}: {' '.join(install)}"
        copied = {src for sources in copies for src in sources}
        assert {"pyproject.toml", "README.md", "cli.py", *TOP_PACKAGES} <= copied, dockerfile.name


def _copy_build_context(dest: Path) -> None:
    """Copy what docker/Dockerfile copies (its COPY sources, relative to the repository root) into dest."""
    copies, _ = _dockerfile_steps(DOCKERFILES[0])
    for sources in copies:
        for src in sources:
            path = ROOT / src
            target = dest / src
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, target)


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (which points at the worktree in development)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def _source_packages() -> set[str]:
    """Every package of the source tree: a folder with an __init__.py under the top packages."""
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def _wheel_modules(wheel: Path) -> list[str]:
    """The importable module names of the wheel's .py files."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".py") and ".dist-info/" not in n]
    modules = []
    for name in names:
        parts = name[: -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    return sorted(modules)


@pytest.mark.slow
def test_wheel_installs_and_imports_without_the_source_tree(tmp_path):
    """The wheel built from the Dockerfile's build context holds every package of the source tree, installs
    into an empty folder, imports every module from that folder, and its `nowcast --help` runs."""
    context = tmp_path / "context"
    _copy_build_context(context)
    dist, site = tmp_path / "dist", tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
        ],
        cwd=context,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("nowcast-*.whl")

    modules = _wheel_modules(wheel)
    missing = _source_packages() - set(modules)
    assert not missing, f"packages missing from the wheel: {sorted(missing)}"
    assert "cli" in modules

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    env = {**_clean_env(), "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"  # an empty working folder: nothing importable beside the interpreter
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, *modules],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    files = json.loads(run.stdout.strip().splitlines()[-1])
    outside = {
        name: path for name, path in files.items() if not Path(path).resolve().is_relative_to(site.resolve())
    }
    assert not outside, f"modules imported from outside the install: {outside}"

    script = site / "bin" / "nowcast"
    assert script.is_file()
    help_run = subprocess.run(
        [sys.executable, "-c", _RUN_SCRIPT, str(script), "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr[-3000:]
    assert re.search(r"\bingest\b", help_run.stdout) and re.search(r"\btrain\b", help_run.stdout)
