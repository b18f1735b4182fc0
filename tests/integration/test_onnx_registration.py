"""The training job's registration leaves an ONNX note on the champion's run: the export
(`onnx/model.onnx`, answering as the registered pipeline does) or why there is none.

Uses the session's shared `trained_home`: no training of its own.
"""

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from driftloop.onnx_export import TAG_ONNX, OnnxRunner, disagreement
from driftloop.registry import CHAMPION, Registry
from driftloop.schema import load_schema
from driftloop.settings import Settings
from driftloop.simulate import LoanStream
from driftloop.training import TRUSTED_TYPES

pytestmark = pytest.mark.integration


def test_the_champions_run_holds_its_onnx_export_or_the_reason(
    trained_home: Settings, tmp_path: Path
) -> None:
    registry = Registry(trained_home.mlflow_tracking_uri, trained_home.model_name)
    champion = registry.by_alias(CHAMPION)
    client = MlflowClient(trained_home.mlflow_tracking_uri)
    note = client.get_run(champion.run_id).data.tags[TAG_ONNX]
    stored = [a.path for a in client.list_artifacts(champion.run_id, "onnx")]
    if note.startswith("unavailable: "):
        assert stored == []
        return
    assert note == "onnx/model.onnx"
    assert stored == ["onnx/model.onnx"]
    local = mlflow.artifacts.download_artifacts(
        run_id=champion.run_id, artifact_path=note, dst_path=str(tmp_path)
    )
    schema = load_schema(trained_home.schema_path)
    assert schema is not None
    rows = LoanStream(seed=99).take_frame(500, trained_home.target_column)[schema.feature_names]
    pipeline = registry.load_verified(champion.version, TRUSTED_TYPES)
    got = OnnxRunner.of(Path(local).read_bytes(), schema).output(rows)
    assert disagreement(got, pipeline.predict_proba(rows), regression=False) is None
