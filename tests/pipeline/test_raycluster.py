"""pipeline.raycluster: an unreachable Ray address fails fast with advice instead of hanging."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

import cli
from pipeline.errors import NowcastError
from pipeline.raycluster import check_ray_reachable, connect_ray
from tests.pipeline._ray_fixtures import free_port


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_closed_port_fails_fast_with_advice(form):
    address = form.format(port=free_port())
    t0 = time.monotonic()
    with pytest.raises(NowcastError, match="no Ray cluster answers.*RAY_ADDRESS"):
        check_ray_reachable(address, timeout_s=2)
    assert time.monotonic() - t0 < 5


def test_listening_port_passes_and_unparseable_forms_are_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_ray_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    for address in ("auto", "head-without-port", "head:notaport"):
        check_ray_reachable(address)


def test_connect_ray_checks_before_ray_init(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(NowcastError, match="no Ray cluster answers"):
        connect_ray(f"127.0.0.1:{free_port()}")


def test_cli_train_on_unreachable_cluster_is_one_line(tmp_path):
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    synth_archive(
        SynthConfig(out_dir=tmp_path / "a", days=3, frames_per_day=30, size_px=32, workers=1), progress=False
    )
    ingest(IngestConfig(archive=tmp_path / "a", store=tmp_path / "s.zarr", workers=0), progress=False)
    result = CliRunner().invoke(
        cli.app,
        [
            "train",
            str(tmp_path / "s.zarr"),
            "--steps",
            "2",
            "--ray-address",
            f"127.0.0.1:{free_port()}",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--storage-path",
            str(tmp_path / "rr"),
        ],
    )
    assert result.exit_code == 1
    assert "error: no Ray cluster answers" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_driver_link_relays_lines_and_reports_a_gone_driver(capsys):
    import ray

    from pipeline.raycluster import DriverGone, DriverLink

    started = connect_ray(None, num_cpus=1, include_dashboard=False)
    try:
        link = DriverLink.create()

        @ray.remote(num_cpus=0)
        def worker(link):
            link.say("[train] hello from a worker")
            link.check()
            return "ok"

        with link.printing():
            assert ray.get(worker.remote(link)) == "ok"
        out = capsys.readouterr().out
        assert "[train] hello from a worker" in out, out
        assert not started or "[ray] started a local Ray; Ray's own logs: " in out, out
        ray.kill(link.actor)  # what the driver's death does to the actor it owns (ray.kill is asynchronous)
        with pytest.raises(DriverGone, match="the driver of this run is gone"):
            for _ in range(300):
                link.check()
                time.sleep(0.1)
    finally:
        if started:
            ray.shutdown()
