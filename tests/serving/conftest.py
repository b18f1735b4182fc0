"""A home with two registered versions and the real Serve application on 127.0.0.1.

The serving tests move aliases and tamper with artifacts, so they get a home of their own
rather than the session's `trained_home`. Ray is started once for the package with two
CPUs and always shut down, HAProxy included; the real-data and regression applications run
beside the loans on the same Ray, half a CPU each.
"""

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from ray import serve
from sklearn.datasets import load_breast_cancer, load_diabetes

from driftloop.candidate import model_signature, serving_requirements
from driftloop.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    TAG_SHA256,
    Registry,
    configure_tracking,
    directory_sha256,
    ensure_experiment,
)
from driftloop.schema import DatasetSchema, infer_schema
from driftloop.settings import Settings, load_settings
from driftloop.training import DEFAULT_TRIALS, TRUSTED_TYPES, make_model, model_output
from serving import launch
from serving.app import ServeArgs, build_app
from serving.model import LoadedModel, ModelStore, example_rows
from tests.conftest import FAST_ENV, land, train

ADMIN_KEY = "test-admin-key-0123456789abcdef0123"  # 32+ characters, as required
SERVE_ENV = {
    **FAST_ENV,
    "DRIFTLOOP_ADMIN_API_KEY": ADMIN_KEY,
    # Short windows and flushes so tests read the prediction log within a second, and see
    # windows folded.
    "DRIFTLOOP_PREDICTION_LOG_WINDOW_S": "2",
    "DRIFTLOOP_PREDICTION_LOG_FLUSH_S": "0.25",
}


@dataclass(frozen=True)
class Served:
    settings: Settings
    url: str
    registry: Registry
    champion: str
    challenger: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="package")
def serving_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Environment for the whole package: a fresh home, fast training, an admin key."""
    saved = dict(os.environ)
    os.environ.pop("DAGSTER_HOME", None)
    os.environ["DRIFTLOOP_HOME"] = str(tmp_path_factory.mktemp("serving") / "home")
    os.environ["DRIFTLOOP_SERVE_PORT"] = str(launch.free_port())
    os.environ.update(SERVE_ENV)
    try:
        yield load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="package")
def two_versions(serving_env: Settings) -> tuple[str, str]:
    """Train twice on different simulated data: @champion v1 and @challenger v2."""
    settings = serving_env
    land(settings, rows=3000, batch_rows=1500, seed=7)
    assert train(settings).success
    land(settings, rows=1500, batch_rows=1500, seed=11)
    assert train(settings).success
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    registry.set_alias(CHAMPION, "1")
    registry.set_alias(CHALLENGER, "2")
    registry.delete_alias(PREVIOUS)
    return "1", "2"


@pytest.fixture(scope="package")
def served(serving_env: Settings, two_versions: tuple[str, str]) -> Iterator[Served]:
    settings = serving_env
    args = ServeArgs(home=str(settings.home), poll_interval_s=0.2)
    try:
        url = launch.start(settings, args, num_cpus=2)
        yield Served(
            settings=settings,
            url=url,
            registry=Registry(settings.mlflow_tracking_uri, settings.model_name),
            champion=two_versions[0],
            challenger=two_versions[1],
        )
    finally:
        launch.stop(settings)
        assert not launch.haproxy_pids(settings), "an HAProxy process outlived Serve"


def artifact_file(settings: Settings, registry: Registry, version: str) -> Path:
    """The model file of `version` inside the MLflow artifact store (for tampering)."""
    source = registry.client.get_model_version(registry.name, version).source
    model_id = source.removeprefix("models:/")
    model = registry.client.get_logged_model(model_id)
    return Path(model.artifact_location.removeprefix("file://")) / "model.skops"


# A second application on the same Ray instance, serving a model of real data.
REAL_APP, REAL_PREFIX = "real", "/real"
# Share of cells blanked at random per column in the real table.
BLANKED = {"radius": 0.1, "texture": 0.08, "large": 0.1, "texture_band": 0.12}


def cancer_table(seed: int = 0) -> pd.DataFrame:
    """scikit-learn's breast cancer data as a team would have it: a case id, gaps in some
    columns, a bool column (large tumours) and a text column (texture bands)."""
    data = load_breast_cancer(as_frame=True)
    source = data.frame
    table = pd.DataFrame(
        {
            "case": [f"case-{i:04d}" for i in range(len(source))],
            "radius": source["mean radius"],
            "texture": source["mean texture"],
            "smoothness": source["mean smoothness"],
            "concavity": source["worst concavity"],
            "symmetry": source["mean symmetry"],
            "large": (source["mean area"] > source["mean area"].median()).astype(object),
            "texture_band": pd.cut(
                source["mean texture"],
                [0, 16, 20, 24, 100],
                labels=["smooth", "fine", "coarse", "rough"],
            ).astype(object),
            "label": data.target,
        }
    )
    rng = np.random.default_rng(seed)
    for name, share in BLANKED.items():
        table.loc[rng.random(len(table)) < share, name] = None
    return table


@dataclass(frozen=True)
class RealServed:
    settings: Settings
    url: str
    model: LoadedModel  # the champion as a replica loads it, to compare answers with

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="package")
def real_served(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServed]:
    """The breast cancer table landed as a Parquet file in a home of its own, trained through
    the Dagster jobs (business id column configured), served at `/real` beside the loans."""
    saved = dict(os.environ)
    os.environ["DRIFTLOOP_HOME"] = str(tmp_path_factory.mktemp("real") / "home")
    os.environ["DRIFTLOOP_ID_COLUMNS"] = "case"
    os.environ.pop("DAGSTER_HOME", None)
    try:
        settings = load_settings()
        settings.landing.write_frame("cancer.parquet", cancer_table())
        assert train(settings).success
    finally:
        os.environ.clear()
        os.environ.update(saved)
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    info = registry.by_alias(CHAMPION)
    assert info is not None, "the real table's first model was not promoted"
    model = ModelStore(registry, tmp_path_factory.mktemp("real-cache")).load(CHAMPION, info)
    args = ServeArgs(home=str(settings.home), replica_cpus=0.5, poll_interval_s=0.2)
    serve.run(build_app(args), name=REAL_APP, route_prefix=REAL_PREFIX)
    try:
        yield RealServed(settings=settings, url=served.url + REAL_PREFIX, model=model)
    finally:
        serve.delete(REAL_APP)


# A third application on the same Ray instance, serving regressors of real data.
REGRESSION_APP, REGRESSION_PREFIX = "regression", "/regression"
DIABETES_BLANKED = {"bmi": 0.1, "bp": 0.08, "s5": 0.1, "sex": 0.12}


def diabetes_table(seed: int = 0) -> pd.DataFrame:
    """scikit-learn's diabetes data in raw units, sex as text, gaps in four columns: its
    target (disease progression, 214 distinct values) is a regression by inference."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "female", 2.0: "male"}).astype(object)
    rng = np.random.default_rng(seed)
    for name, share in DIABETES_BLANKED.items():
        frame.loc[rng.random(len(frame)) < share, name] = None
    return frame


@dataclass(frozen=True)
class RegressionServed:
    settings: Settings
    url: str
    registry: Registry
    champion: LoadedModel  # v1, boosting, as a replica loads it
    challenger: LoadedModel  # v2, Ridge
    classifier: str  # v3: a classifier on the same features, of the other task
    holdout: list[dict[str, Any]]  # request rows the models never saw, gaps as None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@contextlib.contextmanager
def tracking(settings: Settings) -> Iterator[None]:
    """MLflow's fluent URIs on `settings`' store, then back: registering a version and
    resolving `models:/` downloads go through them, whatever client they are given."""
    uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    configure_tracking(settings)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])


def register_fitted(
    settings: Settings, pipeline: Any, schema: DatasetSchema, x: pd.DataFrame
) -> str:
    """Log and register a fitted pipeline as training registers a candidate (skops with the
    allow-list, the schema's signature, the input example, the sha256 tag serving checks);
    within `tracking(settings)`."""
    example = x.head(5)
    signature = model_signature(schema, model_output(pipeline, example))
    experiment = ensure_experiment(settings, settings.model_name)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=TRUSTED_TYPES,
            pip_requirements=serving_requirements(),
        )
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)
        sha256 = directory_sha256(Path(local))
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    return registry.register(info.model_id, run.info.run_id, {TAG_SHA256: sha256}, "").version


@pytest.fixture(scope="package")
def regression_served(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegressionServed]:
    """The diabetes table in a home of its own: @champion v1 boosting, @challenger v2 Ridge
    (both `make_model`'s regressors at the search's default points), v3 a classifier of the
    same columns (target above its median); served at `/regression` beside the loans."""
    saved = dict(os.environ)
    os.environ["DRIFTLOOP_HOME"] = str(tmp_path_factory.mktemp("regression") / "home")
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    frame = diabetes_table()
    schema = infer_schema(frame, "target")
    assert schema.task == "regression", schema.task
    train_rows, holdout = frame.iloc[:350], frame.iloc[350:]
    x, y = train_rows[schema.feature_names], train_rows["target"]
    boosting, ridge = (
        make_model(p, schema, seed=0).fit(x, y) for p in DEFAULT_TRIALS["regression"]
    )
    binary = dataclasses.replace(schema, task="binary", labels=(0, 1), metric="accuracy")
    classifier = make_model(DEFAULT_TRIALS["classification"][1], binary, seed=0)
    classifier.fit(x, (y > y.median()).astype(int))
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    store = ModelStore(registry, tmp_path_factory.mktemp("regression-cache"))
    with tracking(settings):
        versions = [register_fitted(settings, m, schema, x) for m in (boosting, ridge)]
        versions.append(register_fitted(settings, classifier, binary, x))
        registry.set_alias(CHAMPION, versions[0])
        registry.set_alias(CHALLENGER, versions[1])
        champion = store.load(CHAMPION, registry.version(versions[0]))
        challenger = store.load(CHALLENGER, registry.version(versions[1]))
    args = ServeArgs(home=str(settings.home), replica_cpus=0.5, poll_interval_s=0.2)
    serve.run(build_app(args), name=REGRESSION_APP, route_prefix=REGRESSION_PREFIX)
    try:
        yield RegressionServed(
            settings=settings,
            url=served.url + REGRESSION_PREFIX,
            registry=registry,
            champion=champion,
            challenger=challenger,
            classifier=versions[2],
            holdout=example_rows(holdout, champion.features),
        )
    finally:
        serve.delete(REGRESSION_APP)
