"""Serving a model of real data over HTTP: gaps, booleans, text, unseen categories, ids.

The champion is trained on scikit-learn's breast cancer table with cells blanked (see
`cancer_table`); its answers are compared with the pipeline's own `predict_proba` on the
frame the model takes, so "reaches the model as missing" is checked, not assumed.
"""

import numpy as np
import pytest

from serving.model import frame_of
from tests.serving.conftest import BLANKED, RealServed
from tests.waits import logged

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/driftloop:predict"
INSTANCE = {
    "radius": 14.1,
    "texture": 19.3,
    "smoothness": 0.096,
    "concavity": 0.27,
    "symmetry": 0.18,
    "large": True,
    "texture_band": "fine",
}


def unseen_count(real: RealServed, feature: str) -> float:
    with real.client() as client:
        text = client.get("/metrics").text
    prefix = f'driftloop_unseen_categories_total{{feature="{feature}"}} '
    return sum(
        float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)
    )


def test_the_schema_makes_blanked_columns_nullable_and_the_id_no_feature(
    real_served: RealServed,
) -> None:
    features = {f.name: f for f in real_served.model.features}
    assert "case" not in features and "label" not in features
    assert {n for n, f in features.items() if f.nullable} == set(BLANKED)
    assert (features["large"].type, features["texture_band"].type) == ("bool", "str")
    assert real_served.model.compiled is not None, "served by the pandas path"


def test_true_false_null_and_omitted_reach_the_model(real_served: RealServed) -> None:
    gaps = dict.fromkeys(BLANKED)
    instances = [
        INSTANCE,
        {**INSTANCE, "large": False},
        {**INSTANCE, **gaps},
        {k: v for k, v in INSTANCE.items() if k not in BLANKED},
        {**INSTANCE, "texture_band": "  "},  # blank text is missing, as at ingest
    ]
    with real_served.client() as client:
        response = client.post(PREDICT, json={"instances": instances})
    assert response.status_code == 200, response.text
    rows = [{**gaps, **i} for i in instances[:4]] + [{**INSTANCE, "texture_band": None}]
    model = real_served.model
    expected = model.pipeline.predict_proba(frame_of(rows, model.features))
    assert np.isnan(frame_of(rows, model.features).loc[2, "radius"])
    assert response.json()["probabilities"] == expected.tolist()
    answered = response.json()["probabilities"]
    assert answered[2] == answered[3] and answered[0] != answered[2]


@pytest.mark.parametrize(
    "change", [{"smoothness": None}, "omit smoothness"], ids=["null", "omitted"]
)
def test_a_required_feature_missing_is_a_422_naming_it(
    real_served: RealServed, change: object
) -> None:
    instance = dict(INSTANCE)
    if isinstance(change, dict):
        instance.update(change)
    else:
        del instance["smoothness"]
    with real_served.client() as client:
        response = client.post(PREDICT, json={"instances": [instance]})
        wrong = client.post(PREDICT, json={"instances": [{**INSTANCE, "large": "true"}]})
    assert response.status_code == 422 and "smoothness" in response.text
    assert wrong.status_code == 422 and "large" in wrong.text


def test_ids_unseen_categories_and_feedback_by_id(real_served: RealServed) -> None:
    before = unseen_count(real_served, "texture_band")
    instances = [
        {**INSTANCE, "id": "case-new-1"},
        {**INSTANCE, "id": 42, "texture_band": "velvety"},
        INSTANCE,
    ]
    with real_served.client() as client:
        response = client.post(PREDICT, json={"instances": instances})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ids"] == ["case-new-1", "42", None]
        by_id = client.post("/v1/feedback", json={"id": "case-new-1", "label": 0})
        by_int = client.post("/v1/feedback", json=[{"id": 42, "label": 1}])
        both = client.post("/v1/feedback", json={"id": "case-new-1", "request_id": "r", "label": 0})
        neither = client.post("/v1/feedback", json={"label": 0})
    assert by_id.json() == by_int.json() == {"accepted": 1}
    assert both.status_code == neither.status_code == 422
    assert "request_id" in both.text and "'id'" in neither.text
    assert unseen_count(real_served, "texture_band") == before + 1

    log = logged(
        real_served.settings.prediction_log,
        lambda f: (f.request_id == body["request_id"]).sum() == 3,
    )
    mine = log[log.request_id == body["request_id"]].sort_values("index")
    assert mine["id"].tolist() == ["case-new-1", "42", None]
    assert mine["unseen"].tolist() == [None, "texture_band", None]
    assert [list(p) for p in mine["probabilities"]] == body["probabilities"]
    assert mine["texture_band"].tolist() == ["fine", "velvety", "fine"]
    labels = logged(
        real_served.settings.feedback_log, lambda f: {"42", "case-new-1"} <= set(f["id"])
    )
    assert sorted(labels["id"]) == ["42", "case-new-1"] and labels["request_id"].isna().all()
