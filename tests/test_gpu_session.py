"""The lent-GPU session's recipe (benchmarks/gpu/): the offline bundle's package list and the session's
stages agree with the project and with the scripts they call. Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from benchmarks import bench_skill, gpu_check
from benchmarks.gpu import bundle, session

REPO = Path(__file__).resolve().parents[1]


def _dependency_names() -> set[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {bundle.requirement_name(d) for d in deps}


@pytest.mark.parametrize(
    "requirement, name",
    [
        ("dask[distributed]==2026.8.0", "dask"),
        ("ray[train]==2.60.0", "ray"),
        ("google-crc32c>=1.5", "google-crc32c"),
        ("opencv_python_headless>=4.9", "opencv-python-headless"),
        ("PyYAML>=6", "pyyaml"),
        ("netCDF4", "netcdf4"),
    ],
)
def test_requirement_name_is_the_normalised_distribution_name(requirement, name):
    """A pip requirement string gives its PEP 503 distribution name (extras and versions dropped)."""
    assert bundle.requirement_name(requirement) == name


def test_every_project_dependency_is_bundled_or_on_the_device():
    """Each runtime dependency of pyproject.toml is either left to the device image or in the bundle's
    requirements (mlflow as mlflow-skinny + SQLAlchemy + Alembic, at the pinned version)."""
    reqs = bundle.requirements()
    bundled = {bundle.requirement_name(r) for r in reqs}
    for name in _dependency_names():
        if name in bundle.DEVICE_PROVIDED:
            assert name not in bundled
        elif name == "mlflow":
            assert {"mlflow-skinny", "sqlalchemy", "alembic"} <= bundled
            pin = next(
                d
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                if bundle.requirement_name(d) == "mlflow"
            ).split("==")[1]
            assert f"mlflow-skinny=={pin}" in reqs
        else:
            assert name in bundled, f"{name} is neither bundled nor provided by the device"
    assert {"ray", "zarr", "dask", "typer", "netcdf4", "pyproj"} <= bundled
    assert not bundled & bundle.DEVICE_PROVIDED


def _module_exists(name: str) -> bool:
    """Whether module ``name`` is installed here, found without importing it (nor its parents)."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not rest:
        return spec is not None
    base = Path(next(iter(spec.submodule_search_locations)), *rest)
    return base.is_dir() or base.with_suffix(".py").is_file()


def test_the_modules_the_bundle_must_provide_exist():
    """Every module of MUST_IMPORT is a real module (found here, where the packages are installed)."""
    assert not [m for m in bundle.MUST_IMPORT if not _module_exists(m)]
    assert not _module_exists("ray.no_such_module")


@pytest.mark.parametrize(
    "archive_mib, tree_mib, ok",
    [(40.0, 2.0, True), (56.0, 2.0, True), (56.5, 2.0, False), (50.0, 15.0, False)],
)
def test_size_check_keeps_room_for_the_working_tree(archive_mib, tree_mib, ok):
    """The bundle must leave at least TREE_ROOM_MIB (or the tree's size) under the 64 MiB carry limit."""
    error = bundle.check_size(archive_mib, tree_mib)
    assert (error is None) == ok
    if not ok:
        assert "exceeds the 64 MiB" in error


def test_built_bundle_matches_the_recipe():
    """A built bundle (benchmarks/gpu/bundle/, not in git) holds every requirement, nothing the device
    provides, none of the pruned paths, and fits the carry limit with the working tree."""
    manifest_path = bundle.BUNDLE_DIR / bundle.MANIFEST_NAME
    if not manifest_path.is_file():
        pytest.skip("no bundle built here (python benchmarks/gpu/bundle.py)")
    manifest = json.loads(manifest_path.read_text())
    packages = set(manifest["packages"])
    assert {bundle.requirement_name(r) for r in bundle.requirements()} <= packages
    assert not packages & bundle.DEVICE_PROVIDED
    archive = bundle.BUNDLE_DIR / bundle.ARCHIVE_NAME
    assert archive.stat().st_size / 2**20 == pytest.approx(manifest["archive_mib"], abs=0.01)
    assert bundle.check_size(manifest["archive_mib"], bundle.working_tree_mib()) is None
    with tarfile.open(archive, "r:xz") as tar:
        names = tar.getnames()
    for pruned in bundle.PRUNE:
        assert not any(n.removeprefix("./").startswith(pruned + "/") for n in names), pruned
    assert "./ray/core/src/ray/raylet/raylet" in names


def _dry_run(*args: str) -> list[str]:
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu/session.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OUT"},
        check=True,
    )
    return proc.stdout.splitlines()


@pytest.mark.parametrize("mode", [[], ["--cpu-smoke"]])
def test_dry_run_lists_the_stages_in_order(mode):
    """session.sh --dry-run prints each stage with its budget and commands; GPU mode trains with --gpu,
    the smoke run does not."""
    lines = _dry_run(*mode)
    stages = [ln.split(" ", 1)[0] for ln in lines if not ln.startswith(" ")]
    assert stages == ["env", "skill", "predict", "gpu_check"]
    skill_cmd = next(ln for ln in lines if "bench_skill.py" in ln).split()
    assert ("--gpu" in skill_cmd) == (not mode)
    assert skill_cmd[skill_cmd.index("--days") + 1] == ("120" if not mode else "8")


def test_dry_run_refuses_an_unknown_stage():
    """--stages with a name that is no stage is a usage error naming the stages."""
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu/session.sh"), "--dry-run", "--stages", "env,speed"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown stage(s) speed" in proc.stderr


@pytest.mark.parametrize("cpu_smoke", [False, True])
def test_stage_commands_are_accepted_by_the_scripts_they_call(cpu_smoke, tmp_path):
    """The skill stage's options parse with bench_skill.py's own parser; gpu_check's stages exist."""
    settings = session.Settings.for_mode(cpu_smoke, None)
    stages = {s.name: s for s in session.build_stages(settings, tmp_path, tmp_path / "results")}
    skill_cmd = stages["skill"].commands[0]
    args = bench_skill.parse_args(skill_cmd[2:])
    assert args.gpu == (not cpu_smoke) and args.workers == 1 and args.reuse_baselines
    assert args.cells.split(",")[0] == "trajgru"  # TrajGRU first: its row survives a cut
    check_cmd = stages["gpu_check"].commands[0]
    check_stages = check_cmd[check_cmd.index("--stages") + 1].split(",")
    assert set(check_stages) <= set(gpu_check.STAGES)
    assert "pytest" in check_stages


def test_carried_baselines_name_the_gpu_runs_store():
    """The carried baseline scores are reused by bench_skill only for the store they scored: they must
    name the GPU run's benchmark store (test split)."""
    files = sorted(session.BASELINES_DIR.glob("*.json"))
    if not files:
        pytest.skip("no carried baseline scores")
    assert {f.stem for f in files} == set(bench_skill.BASELINES)
    for f in files:
        scored = json.loads(f.read_text())
        assert scored["split"] == "test"
        assert scored["store"]["path"] == str(session.GPU_WORKDIR / "skill" / "store.zarr")
        # the same benchmark store as the CPU run of bench_skill.py: the same scores, row for row (up to
        # float summation order: optical flow's threads, B-MSE sums over 844 clips)
        cpu_row = json.loads((REPO / "benchmarks/results/skill.json").read_text())["rows"][f.stem]
        row = bench_skill.summary_row(scored)
        assert row["n_clips"] == cpu_row["n_clips"] == 844
        assert row["csi"] == pytest.approx(cpu_row["csi"], abs=1e-5)
        assert row["b_mse"] == pytest.approx(cpu_row["b_mse"], rel=1e-6)


def _skill_row(csi5: float, b_mse: float) -> dict:
    return {"csi": {"0.5": 0.5, "5": csi5}, "b_mse": b_mse}


@pytest.mark.parametrize(
    "traj, conv, flow, beats, ge",
    [
        ((0.330, 300.0), (0.320, 310.0), (0.299, 449.0), True, True),  # 0.330 / 0.299 = 1.104
        ((0.328, 300.0), (0.330, 310.0), (0.299, 449.0), False, False),  # 1.097 < 1.10
        ((0.400, 460.0), (0.320, 310.0), (0.299, 449.0), False, True),  # B-MSE not lower
    ],
)
def test_skill_targets(tmp_path, traj, conv, flow, beats, ge):
    """Issue 18's skill targets from a skill.json: TrajGRU >= 1.10 x optical flow's CSI >= 5 with a lower
    B-MSE, and TrajGRU >= ConvGRU."""
    rows = {
        "tiny trajgru": _skill_row(*traj),
        "tiny convgru": _skill_row(*conv),
        "optical-flow": _skill_row(*flow),
    }
    path = tmp_path / "skill.json"
    path.write_text(json.dumps({"rows": rows}))
    got = session.skill_targets(path)
    assert got["measured"] and got["beats_optical_flow"] == beats and got["trajgru_ge_convgru"] == ge
    assert got["ratio"] == pytest.approx(traj[0] / flow[0], abs=1e-3)
    assert session.skill_targets(tmp_path / "absent.json") == {"measured": False}


def test_speed_targets_of_the_recorded_h200_run():
    """On the recorded H200 run (README's GPU table) the speed targets read: batch-4 step 68.6 ms (not met),
    10.6 % of the bf16 peak (not met), forecast batch 1 8.2 ms (met), 6.69 GiB at batch 4 (met)."""
    got = session.speed_targets(REPO / "benchmarks/results/gpu_check_h200/bench.json")
    assert got["train_b4_ms"] == pytest.approx(68.6, abs=0.05) and got["train_b4_variant"] == "graph-bf16"
    assert got["train_b4_gib"] == pytest.approx(6.69, abs=0.01)
    assert got["frac_bf16_peak"] == pytest.approx(0.106, abs=0.001)
    assert got["forecast_b1_ms"] == pytest.approx(8.2, abs=0.05)
    assert (got["train_b4_ms_met"], got["frac_bf16_peak_met"]) == (False, False)
    assert (got["forecast_b1_ms_met"], got["train_b4_gib_met"]) == (True, True)


def test_a_stage_past_its_timeout_is_killed_with_its_children(tmp_path):
    """A stage over its timeout is stopped with the processes it started (its process group), and says so."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    stage = session.Stage("slow", 1, "sleeps", [[sys.executable, "-c", script]])
    t0 = time.monotonic()
    status, took = session.run_stage(stage, 2.0, dict(os.environ), tmp_path / "slow.log", tmp_path)
    assert status == "timeout after 2 s" and time.monotonic() - t0 < 20
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie has exited


def test_a_failing_command_ends_its_stage_with_its_exit_code(tmp_path):
    """A command that fails ends the stage (later commands of that stage do not run)."""
    marker = tmp_path / "ran"
    stage = session.Stage(
        "bad",
        10,
        "fails",
        [
            [sys.executable, "-c", "raise SystemExit(3)"],
            [sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        ],
    )
    status, _ = session.run_stage(stage, 10.0, dict(os.environ), tmp_path / "bad.log", tmp_path)
    assert status == "exit 3" and not marker.exists()


def test_results_archive_leaves_out_big_files(tmp_path, monkeypatch):
    """summary.json and results.tgz are written; files over MAX_RESULT_FILE_MIB stay out of the archive."""
    monkeypatch.setattr(session, "MAX_RESULT_FILE_MIB", 0.001)
    results, out = tmp_path / "work" / "results", tmp_path / "out"
    (results / "skill").mkdir(parents=True)
    out.mkdir()
    (results / "skill" / "small.txt").write_text("x")
    (results / "skill" / "big.bin").write_bytes(b"0" * 4096)
    session.write_results(out, results, {"stages": [{"stage": "skill", "status": "ok"}]})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets"]["skill"] == {"measured": False}
    with tarfile.open(out / "results.tgz") as tar:
        assert tar.getnames() == ["results/skill/small.txt"]
