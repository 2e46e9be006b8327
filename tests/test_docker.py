"""docker/: what can be checked without a Docker engine.

- the compose file parses and has the services and volumes the README promises, with Ray's auth token
  set consistently on every Ray node and MLflow's --allowed-hosts naming the service;
- every `nowcast` command the containers run exists;
- the pipeline script the one-shot service runs succeeds outside containers against a real Ray head
  (`ray start --head` on loopback, token auth on) and a real `mlflow server`.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cli
from tests.pipeline._ray_fixtures import mlflow_server, ray_head

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SCRIPT = DOCKER / "run-pipeline.sh"


def _compose() -> dict:
    os.environ.setdefault("RAY_AUTH_TOKEN", "x")  # the file itself refers to it; parsing needs no value
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_services_and_volumes():
    compose = _compose()
    services = compose["services"]
    assert {"mlflow", "ray-head", "ray-worker", "dask-scheduler", "dask-worker", "pipeline", "watch"} <= set(
        services
    )
    assert {"nowcast-data", "mlflow-data"} <= set(compose["volumes"])
    for name in ("ray-head", "ray-worker", "dask-worker", "pipeline", "watch"):
        assert any(v.startswith("nowcast-data:") for v in services[name]["volumes"]), name
    assert "--allowed-hosts mlflow" in services["mlflow"]["command"]
    for name in ("ray-head", "ray-worker"):
        assert services[name]["shm_size"]


def test_ray_auth_token_is_the_same_on_every_ray_node():
    services = _compose()["services"]
    envs = [services[name]["environment"] for name in ("ray-head", "ray-worker", "pipeline")]
    assert all(env["RAY_AUTH_MODE"] == "token" for env in envs)
    assert len({env["RAY_AUTH_TOKEN"] for env in envs}) == 1


def _script_commands() -> list[list[str]]:
    """The `nowcast ...` command lines of the pipeline script, continuation lines joined."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    return [
        shlex.split(line.strip())[1:] for line in text.splitlines() if line.strip().startswith("nowcast ")
    ]


def _compose_commands() -> list[list[str]]:
    """The first word of every container command, and the `nowcast` commands inside them."""
    commands = []
    for service in _compose()["services"].values():
        command = service.get("command")
        if isinstance(command, list):
            command = " ".join(command)
        if command:
            commands.append(shlex.split(command))
    return commands


def test_every_cli_command_the_containers_run_exists():
    runner = CliRunner()
    used = _script_commands()
    assert {c[0] for c in used} >= {"synth", "ingest", "train", "evaluate", "predict"}
    for args in used:
        options = [a for a in args if a.startswith("--")]
        help_text = runner.invoke(cli.app, [args[0], "--help"], terminal_width=200).output
        for option in options:
            assert option in help_text, f"`nowcast {args[0]}` has no option {option}"
    programs = {c[0] for c in _compose_commands()}
    assert programs <= {"mlflow", "ray", "dask", "bash", "nowcast"}, programs
    for args in (c[1:] for c in _compose_commands() if c[0] == "nowcast"):
        help_text = runner.invoke(cli.app, [args[0], "--help"], terminal_width=200).output
        for option in (a for a in args if a.startswith("--")):
            assert option in help_text, f"`nowcast {args[0]}` has no option {option}"


def test_watch_service_follows_the_champion_and_stops_cleanly():
    """The watch service starts once the pipeline registered a champion, reads it from the MLflow
    server, shares the data volume, and gets SIGTERM with time to finish its cycle."""
    watch = _compose()["services"]["watch"]
    args = shlex.split(watch["command"])
    assert args[:2] == ["nowcast", "watch"]
    assert args[args.index("--model") + 1].endswith("@champion")
    assert watch["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert watch["depends_on"]["pipeline"]["condition"] == "service_completed_successfully"
    assert watch["stop_signal"] == "SIGTERM" and watch["restart"] == "unless-stopped"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_script_against_real_ray_head_and_mlflow_server(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env.pop("RAY_ADDRESS", None)
    with mlflow_server(tmp_path / "mlflow") as tracking_uri, ray_head(tmp_path, env) as address:
        env.update(
            DATA_DIR=str(tmp_path / "data"),
            RAY_ADDRESS=address,
            MLFLOW_TRACKING_URI=tracking_uri,
            SYNTH_DAYS="3",
            SYNTH_FRAMES_PER_DAY="40",
            SYNTH_SIZE="32",
            TRAIN_STEPS="4",
            MODEL_NAME="compose-test",
            PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        )
        proc = subprocess.run(
            ["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540
        )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = tmp_path / "data"
    assert (data / "store.zarr").is_dir()
    assert (data / "eval-champion.json").is_file() and (data / "eval-persistence.json").is_file()
    assert list((data / "forecast").glob("*.gif"))
    assert re.search(r"compose-test", proc.stdout + proc.stderr)


def test_published_ports_bind_to_loopback_only():
    """MLflow has no authentication in the compose file, and the dashboards are local tools."""
    published = [
        (name, port) for name, service in _compose()["services"].items() for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} >= {"mlflow", "ray-head", "dask-scheduler"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_images_serve_the_dashboards_the_compose_file_publishes():
    cpu = (DOCKER / "Dockerfile").read_text()
    assert '"ray[default]==' in cpu and "bokeh" in cpu  # ray[train] alone serves no Ray dashboard
    cuda = (DOCKER / "Dockerfile.cuda").read_text()
    assert "FROM rayproject/ray:" in cuda and "bokeh" in cuda  # the Ray image comes with ray[default]
    assert "RAY_AUTH_MODE: token" in (DOCKER / "docker-compose.yml").read_text()
