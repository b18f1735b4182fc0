"""Serving regressors of real data over HTTP: floats, feedback values, logs, canary, shadow.

The champion (boosting) and the challenger (Ridge) are trained on scikit-learn's diabetes
table with gaps and a text column (see `diabetes_table`); every answer is compared with the
pipeline's own `predict` on the frame the model takes, bit for bit.
"""

import json

import pandas as pd
import pytest

from driftloop.registry import CHALLENGER, CHAMPION
from serving.model import frame_of
from tests.serving.conftest import ADMIN_KEY, DIABETES_BLANKED, RegressionServed
from tests.waits import logged

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/driftloop:predict"
ADMIN = {"X-API-Key": ADMIN_KEY}


def expected(model, rows: list[dict]) -> list[float]:
    return model.pipeline.predict(frame_of(rows, model.features)).tolist()


def routing(served: RegressionServed, **change: object) -> None:
    with served.client() as client:
        response = client.post("/admin/routing", json=change, headers=ADMIN)
    assert response.status_code == 200, response.text


def test_a_regressor_answers_its_pipelines_predictions(regression_served: RegressionServed) -> None:
    served = regression_served
    champion = served.champion
    assert champion.compiled is not None and served.challenger.compiled is not None
    rows = served.holdout[:40]
    assert any(row[name] is None for row in rows for name in DIABETES_BLANKED)
    with served.client() as client:
        ready = client.get("/readyz", headers=ADMIN).json()
        response = client.post(
            PREDICT, json={"instances": [{**row, "id": f"p-{i}"} for i, row in enumerate(rows)]}
        )
        alone = [client.post(PREDICT, json={"instances": [row]}).json() for row in rows[:8]]
    assert (ready["champion"]["task"], ready["challenger"]["task"]) == ("regression",) * 2
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "ids", "model_version", "model_semver", "request_id"}
    assert body["model_semver"] is None and ready["champion"]["semver"] is None  # no tag
    assert response.headers["x-model-version"] == body["model_version"] == champion.version
    assert body["ids"] == [f"p-{i}" for i in range(40)]
    assert all(type(p) is float for p in body["predictions"])
    assert body["predictions"] == expected(champion, rows)
    # One instance per request: the all-trees-at-once route of the compiled path.
    assert [a["predictions"][0] for a in alone] == [expected(champion, [r])[0] for r in rows[:8]]
    assert not any("probabilities" in a for a in alone)


def test_the_openapi_schema_documents_floats_and_no_probabilities(
    regression_served: RegressionServed,
) -> None:
    with regression_served.client() as client:
        schema = client.get("/openapi.json").json()
    answer = schema["paths"]["/v1/models/{model}:predict"]["post"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("RegressionResponse")
    response = schema["components"]["schemas"]["RegressionResponse"]["properties"]
    assert response["predictions"]["items"] == {"type": "number"}
    assert "probabilities" not in response and "classes" not in response
    assert "model_semver" in response
    label = schema["components"]["schemas"]["RegressionFeedbackItem"]["properties"]["label"]
    assert {option["type"] for option in label["anyOf"]} == {"integer", "number"}


BAD_LABELS = {
    "string": '"151.0"',
    "bool": "true",
    "NaN": "NaN",
    "inf": "Infinity",
    "beyond float64": str(10**309),
    "null": "null",
    "a class label list": "[1]",
}


@pytest.mark.parametrize("case", BAD_LABELS, ids=list(BAD_LABELS))
def test_feedback_that_is_not_a_finite_number_is_a_422_naming_label(
    regression_served: RegressionServed, case: str
) -> None:
    body = f'{{"request_id": "r-1", "label": {BAD_LABELS[case]}}}'
    with regression_served.client() as client:
        one = client.post(
            "/v1/feedback", content=body.encode(), headers={"content-type": "application/json"}
        )
        listed = client.post(
            "/v1/feedback",
            content=f"[{body}]".encode(),
            headers={"content-type": "application/json"},
        )
    for response in (one, listed):
        assert response.status_code == 422, response.text
        assert any("label" in problem["loc"] for problem in response.json()["detail"])


def test_predictions_and_observed_values_are_logged_exactly(
    regression_served: RegressionServed,
) -> None:
    served = regression_served
    rows = served.holdout[40:45]
    with served.client() as client:
        answer = client.post(PREDICT, json={"instances": rows}).json()
        observed = [151, 0.1 + 0.2, 2**64, -1e-300]
        feedback = [
            {"request_id": answer["request_id"], "label": observed[0]},
            {"id": "p-1", "label": observed[1]},
            {"id": "p-2", "label": observed[2]},
            {"id": "p-3", "label": observed[3]},
        ]
        accepted = client.post("/v1/feedback", json=feedback).json()
    assert accepted == {"accepted": 4}
    log = logged(
        served.settings.prediction_log, lambda f: (f.request_id == answer["request_id"]).sum() == 5
    )
    mine = log[log.request_id == answer["request_id"]].sort_values("index")
    assert [float(p) for p in mine.prediction] == answer["predictions"]
    assert mine.prediction.tolist() == [repr(p) for p in answer["predictions"]]
    assert mine.probability.isna().all() and mine.probabilities.isna().all()
    assert set(mine.route) == {"champion"} and mine.unseen.isna().all()

    def mine_of(labels: pd.DataFrame) -> pd.DataFrame:
        return labels[
            labels.request_id.eq(answer["request_id"]) | labels.id.isin(["p-1", "p-2", "p-3"])
        ]

    labels = mine_of(logged(served.settings.feedback_log, lambda f: len(mine_of(f)) == 4))
    assert labels.label.tolist() == [repr(float(v)) for v in observed]
    assert [float(v) for v in labels.label] == [float(v) for v in observed]


def test_canary_and_shadow_serve_the_challenger_regressor(
    regression_served: RegressionServed,
) -> None:
    served = regression_served
    rows = served.holdout[50:60]
    routing(served, canary_weight=1.0)
    try:
        with served.client() as client:
            canary = client.post(PREDICT, json={"instances": rows})
            huge = client.post(PREDICT, json={"instances": [{**rows[0], "bmi": 1e308}]})
        routing(served, canary_weight=0.0, shadow=True)
        with served.client() as client:
            answers = [
                client.post(PREDICT, json={"instances": [{**row, "key": f"k{i}"}]}).json()
                for i, row in enumerate(rows)
            ]
    finally:
        routing(served, canary_weight=0.0, shadow=False)
    assert canary.headers["x-model-version"] == served.challenger.version
    assert canary.json()["predictions"] == expected(served.challenger, rows)
    # Ridge overflows on a value far beyond training: no answer rather than invalid JSON.
    assert huge.status_code == 422 and "no finite prediction for instances [0]" in huge.text
    assert {a["model_version"] for a in answers} == {served.champion.version}
    assert [a["predictions"][0] for a in answers] == [
        expected(served.champion, [r])[0] for r in rows
    ]

    ids = [a["request_id"] for a in answers]
    log = logged(
        served.settings.prediction_log,
        lambda f: (f.request_id.isin(ids) & f.route.eq("shadow")).sum() == len(rows),
    )
    mine = log[log.request_id.isin(ids)]
    shadow = mine[mine.route == "shadow"].set_index("request_id")
    assert len(shadow) == len(rows) and set(shadow.model_version) == {served.challenger.version}
    assert [float(shadow.prediction[a["request_id"]]) for a in answers] == [
        expected(served.challenger, [r])[0] for r in rows
    ]


def test_a_model_of_another_task_is_refused_and_the_champion_keeps_serving(
    regression_served: RegressionServed,
) -> None:
    """A classifier of the same columns as challenger, then as champion: refused both times
    with the reason, and the regressors keep their slots."""
    served = regression_served
    registry = served.registry
    champion, challenger = served.champion.version, served.challenger.version
    row = served.holdout[0]
    try:
        with served.client() as client:
            registry.set_alias(CHALLENGER, served.classifier)
            ready = client.post("/admin/reload", headers=ADMIN).json()
            assert ready["challenger"] == {**ready["challenger"], "version": challenger}
            registry.set_alias(CHALLENGER, challenger)
            registry.set_alias(CHAMPION, served.classifier)
            ready = client.post("/admin/reload", headers=ADMIN).json()
            assert ready["champion"] == {**ready["champion"], "version": champion}
            answer = client.post(PREDICT, json={"instances": [row]})
            metrics = client.get("/metrics").text
    finally:
        registry.set_alias(CHAMPION, champion)
        registry.set_alias(CHALLENGER, challenger)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == champion
    assert answer.json()["predictions"] == expected(served.champion, [row])
    assert 'driftloop_serving_alerts_total{kind="model_refused"}' in metrics
    lines = (served.settings.serving_dir / "events.jsonl").read_text().splitlines()
    refused = {json.loads(line)["message"] for line in lines}
    for alias in ("challenger", "champion"):
        reason = (
            f"@{alias} v{served.classifier} is a classification model but @champion "
            f"v{champion} is a regression model"
        )
        assert any(message.startswith(reason) for message in refused), refused
