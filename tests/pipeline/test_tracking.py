"""pipeline.tracking: URIs, runs, model logging/registration (loaded back as forecasters), the champion alias."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import tracking
from pipeline.errors import NowcastError
from pipeline.forecasters import load_forecaster
from tests.pipeline._ray_fixtures import mlflow_server


def tiny_model(seed: int = 0):
    from trajgru.model import build_model

    torch.manual_seed(seed)
    return build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=3).eval()


@pytest.fixture(scope="module")
def _module_sqlite(tmp_path_factory):
    """One SQLite tracking store per module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def sqlite_uri(_module_sqlite):
    """The module's SQLite store as the active MLflow tracking URI (tests use distinct names)."""
    import mlflow

    mlflow.set_tracking_uri(_module_sqlite)
    yield _module_sqlite
    mlflow.set_tracking_uri("")


# ------------------------------------------------------------------ resolve_tracking_uri
def test_resolve_tracking_uri_default_is_absolute_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_resolve_tracking_uri_env_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    # an explicit URI wins over the environment
    assert tracking.resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/y.db") == "sqlite:////abs/y.db"
    assert tracking.resolve_tracking_uri("runs_dir") == (tmp_path.resolve() / "runs_dir").as_uri()


def test_unreachable_server_fails_fast_with_advice():
    t0 = time.monotonic()
    with pytest.raises(NowcastError, match="not reachable.*mlflow server"):
        tracking.setup_experiment("http://127.0.0.1:9", "x")  # port 9 (discard): nothing listens
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------ champion alias
def _version_with_score(client, name: str, score: float | None) -> str:
    """A registered version of ``name`` whose run has ``score`` as its champion metric."""
    import mlflow

    exp_id = tracking.setup_experiment(mlflow.get_tracking_uri(), "champ")
    run = client.create_run(exp_id)
    if score is not None:
        client.log_metric(run.info.run_id, tracking.CHAMPION_METRIC, score)
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except Exception:  # noqa: BLE001 (already exists)
        pass
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return mv.version


def _champion(client, name):
    return client.get_model_version_by_alias(name, "champion").version


def test_champion_alias_moves_only_on_improvement(sqlite_uri):
    import mlflow

    client = mlflow.MlflowClient()
    v1 = _version_with_score(client, "m", 0.30)
    assert tracking.promote_if_better("m", v1, 0.30) is True  # first version: champion
    assert _champion(client, "m") == v1
    v2 = _version_with_score(client, "m", 0.20)
    assert tracking.promote_if_better("m", v2, 0.20) is False  # worse: stays v1
    assert _champion(client, "m") == v1
    v3 = _version_with_score(client, "m", 0.30)
    assert tracking.promote_if_better("m", v3, 0.30) is False  # tie: stays v1
    v4 = _version_with_score(client, "m", float("nan"))
    assert tracking.promote_if_better("m", v4, float("nan")) is False  # NaN never wins
    v5 = _version_with_score(client, "m", 0.45)
    assert tracking.promote_if_better("m", v5, 0.45) is True  # better: moves
    assert _champion(client, "m") == v5
    # the comparison reads the champion's *run metric*, not the caller's memory
    assert tracking.version_score("m", v5) == pytest.approx(0.45)
    # manual promotion moves it back whatever the scores
    tracking.promote("m", v2)
    assert _champion(client, "m") == v2
    v6 = _version_with_score(client, "m", 0.25)
    assert tracking.promote_if_better("m", v6, 0.25) is True  # 0.25 > v2's 0.20
    assert _champion(client, "m") == v6


def test_version_score_is_the_registered_weights_score_not_the_runs_last(sqlite_uri):
    """A run whose last validation (0.20) is worse than its best (0.40) registers the best weights:
    the version's tag, not the run's last metric, is its score."""
    import mlflow

    client = mlflow.MlflowClient()
    v1 = _version_with_score(client, "best", 0.20)
    assert tracking.version_score("best", v1) == pytest.approx(0.20)  # no tag: the run metric
    tracking.tag_version_score("best", v1, 0.40, 1500)
    assert tracking.version_score("best", v1) == pytest.approx(0.40)
    assert client.get_model_version("best", str(v1)).tags["best_step"] == "1500"
    assert tracking.promote_if_better("best", v1, 0.40) is True
    v2 = _version_with_score(client, "best", 0.30)  # beats 0.20, not 0.40
    assert tracking.promote_if_better("best", v2, 0.30) is False


def test_a_version_without_a_validation_score_never_becomes_champion(sqlite_uri):
    """An empty validation split gives no score; such a version is registered but
    is not champion, not even as the first version; `nowcast promote` refuses it without --force."""
    import mlflow

    client = mlflow.MlflowClient()
    v1 = _version_with_score(client, "n", None)
    for score in (float("nan"), None):
        assert tracking.promote_if_better("n", v1, score) is False
    assert tracking.champion_version("n") is None
    with pytest.raises(NowcastError, match="no validation score.*--force") as exc:
        tracking.promote("n", v1)
    assert exc.value.exit_code == 2 and tracking.champion_version("n") is None
    tracking.promote("n", v1, alias="staging")  # other aliases: no rule
    tracking.promote("n", v1, force=True)
    assert _champion(client, "n") == v1
    v2 = _version_with_score(client, "n", 0.01)
    assert tracking.promote_if_better("n", v2, 0.01) is True  # champion without metric = -inf


def test_champion_score_of_runs_before_the_metric_rename_is_read(sqlite_uri):
    import mlflow

    client = mlflow.MlflowClient()
    v1 = _version_with_score(client, "legacy", None)
    client.log_metric(client.get_model_version("legacy", v1).run_id, "val_champion_score", 0.5)
    assert tracking.version_score("legacy", v1) == pytest.approx(0.5)
    tracking.promote("legacy", v1)
    v2 = _version_with_score(client, "legacy", 0.4)
    assert tracking.promote_if_better("legacy", v2, 0.4) is False


def test_skill_metric_names_are_one_scheme():
    result = {
        "thresholds": [0.5, 5.0],
        "csi": [[0.2, float("nan")], [0.4, 0.3]],
        "hss": [[0.1, 0.1], [0.3, 0.1]],
        "b_mse": [1.0, 3.0],
        "b_mae": [2.0, 2.0],
        "mse": [1, 1],
        "mae": [1, 1],
    }
    for split in ("valid", "test"):
        m = tracking.skill_metrics(result, split)
        assert m[f"{split}_csi_0.5mm_h"] == pytest.approx(0.3) and m[f"{split}_csi_5mm_h"] == pytest.approx(
            0.3
        )
        assert m[f"{split}_hss_5mm_h"] == pytest.approx(0.1) and m[f"{split}_b_mse"] == pytest.approx(2.0)
    curves = tracking.skill_curves(result, "test", 360)
    assert ("test_csi_5mm_h_by_lead", 0.3, 12) in curves and ("test_csi_5mm_h_by_lead", 0.3, 6) not in curves
    assert tracking.CHAMPION_METRIC == "valid_champion_score"


def test_promote_unknown_version_is_a_nowcast_error(sqlite_uri, tmp_path):
    """Promoting a version that does not exist names the versions the registry holds (with their
    aliases), or the registered names, and gives a working command to browse the registry."""
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model("promo-list")
    for _ in range(2):
        client.create_model_version("promo-list", source=tmp_path.as_uri())
    client.set_registered_model_alias("promo-list", "champion", "2")
    browse = f"browse the registry with `mlflow ui --backend-store-uri {sqlite_uri}`"
    with pytest.raises(NowcastError, match="cannot set alias") as exc:
        tracking.promote("promo-list", 7)
    assert f"promo-list has version(s) 1, 2 (champion); {browse}" in str(exc.value)
    with pytest.raises(NowcastError, match=r"no model is registered as 'nope' \(registered: .*promo-list"):
        tracking.promote("nope", 3)
    with pytest.raises(NowcastError, match="not found"):
        load_forecaster("models:/nope@champion", tracking_uri=sqlite_uri)


def test_log_register_and_load_registered_model(sqlite_uri):
    import mlflow

    model = tiny_model(seed=1)
    example = np.random.default_rng(0).random((2, 2, 1, 16, 16), dtype=np.float32)
    exp_id = tracking.setup_experiment(sqlite_uri, "logtest")
    # artifacts next to the SQLite file, not in ./mlruns of whatever the current directory is
    location = mlflow.MlflowClient().get_experiment(exp_id).artifact_location
    assert location == (Path(sqlite_uri[len("sqlite:///") :]).parent / "mlartifacts" / "logtest").as_uri()
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_metric(tracking.CHAMPION_METRIC, 0.1)
        logged = tracking.log_and_register_model(model, example, "reg")
    assert logged.registered_version == 1
    assert logged.serialization_format == "pt2"  # torch.export works for the recurrent model
    assert tracking.promote_if_better("reg", 1, 0.1)
    x = torch.rand(2, 3, 1, 16, 16)
    with torch.no_grad():
        expected = model(x)
    for uri in ("models:/reg@champion", "models:/reg/1"):
        f = load_forecaster(uri, tracking_uri=sqlite_uri)
        assert f.run_id == run.info.run_id
        assert (f.in_len, f.out_len) == (2, 3)
        assert torch.allclose(f(x), expected, atol=1e-6)
    # MLflow's own loader reads the pt2 export, with a batch size other than the example's
    native = mlflow.pytorch.load_model("models:/reg/1")
    assert torch.allclose(native(x), expected, atol=1e-5)
    with pytest.raises(NowcastError, match="not found"):
        load_forecaster("models:/reg/7", tracking_uri=sqlite_uri)


@pytest.mark.slow
def test_register_and_champion_against_real_mlflow_server(tmp_path):
    import mlflow

    with mlflow_server(tmp_path / "server") as uri:
        exp_id = tracking.setup_experiment(uri, "server-test")
        assert mlflow.get_tracking_uri() == uri
        model = tiny_model(seed=2)
        example = np.random.default_rng(1).random((2, 2, 1, 16, 16), dtype=np.float32)
        versions = []
        for score in (0.2, 0.1, 0.3):
            with mlflow.start_run(experiment_id=exp_id):
                mlflow.log_metric(tracking.CHAMPION_METRIC, score)
                logged = tracking.log_and_register_model(model, example, "srv", serialization_format="pickle")
            versions.append(
                (
                    logged.registered_version,
                    tracking.promote_if_better("srv", logged.registered_version, score),
                )
            )
        assert versions == [(1, True), (2, False), (3, True)]
        f = load_forecaster("models:/srv@champion", tracking_uri=uri)
        assert f.name == "srv/3"
        x = torch.rand(2, 1, 1, 16, 16)
        with torch.no_grad():
            assert torch.allclose(f(x), model(x), atol=1e-6)
    mlflow.set_tracking_uri("")


# ------------------------------------------------------------------ names and filters
def test_run_names_with_quotes_are_found_not_injected(sqlite_uri):
    """The search filter quotes the value; a quote in a name neither breaks nor widens the search."""
    ids = {}
    for name in ("quote-test-a'b", 'quote-test-a"b', "quote-test-a"):
        ids[name], created = tracking.find_or_create_run(sqlite_uri, "quotes", name)
        assert created
    for name, run_id in ids.items():
        assert tracking.find_or_create_run(sqlite_uri, "quotes", name) == (run_id, False)
    # a name crafted to widen the filter matches nothing: a new run, not another's
    injected = "x' OR tags.`nowcast.run_name` != '"
    assert tracking.find_or_create_run(sqlite_uri, "quotes", injected)[0] not in ids.values()
    with pytest.raises(NowcastError, match="both kinds of quote"):
        tracking.filter_value("""a'b"c""")


def test_check_name_refuses_paths_and_quotes():
    from pipeline.errors import check_name

    for good in ("tiny-1", "demo-20260101-120000", "a.b_c", "_x", None):
        check_name(good, "--run-name")
    for bad in ("../../x", "a/b", "..", ".hidden", "-x", "a'b", 'a"b', "a b", "", "x" * 101, "é"):
        with pytest.raises(NowcastError, match="not a safe name") as exc:
            check_name(bad, "--run-name")
        assert exc.value.exit_code == 2
