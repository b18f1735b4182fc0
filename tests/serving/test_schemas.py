"""The request models built from a signature: nullable features, business ids, feedback."""

import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from pydantic import ValidationError

from serving.schemas import (
    FeatureField,
    FeedbackItem,
    RegressionFeedbackItem,
    build_request_models,
    features_from_signature,
)

SIGNATURE = ModelSignature(
    Schema(
        [
            ColSpec("long", "age"),
            ColSpec("double", "income", required=False),
            ColSpec("boolean", "owner", required=False),
            ColSpec("string", "colour", required=False),
        ]
    )
)


def instance_model() -> type:
    return build_request_models(features_from_signature(SIGNATURE), 10).instance


def test_a_column_that_is_not_required_becomes_a_nullable_field() -> None:
    assert features_from_signature(SIGNATURE) == (
        FeatureField("age", "int"),
        FeatureField("income", "float", nullable=True),
        FeatureField("owner", "bool", nullable=True),
        FeatureField("colour", "str", nullable=True),
    )


def test_nullable_features_take_null_or_omission_required_ones_do_not() -> None:
    instance = instance_model()
    given = instance.model_validate_json('{"age": 3, "income": null, "owner": false}')
    assert given.__dict__ == {
        "age": 3,
        "income": None,
        "owner": False,
        "colour": None,
        "id": None,
        "key": None,
    }
    assert instance(age=3, colour=" ").colour is None  # blank text is missing
    for body, field in [
        ('{"age": null}', "age"),
        ("{}", "age"),
        ('{"age": 1, "owner": "true"}', "owner"),
    ]:
        with pytest.raises(ValidationError) as error:
            instance.model_validate_json(body)
        assert error.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(("sent", "kept"), [('"loan-7"', "loan-7"), ("7", "7"), ("null", None)])
def test_a_business_id_is_kept_as_a_string(sent: str, kept: str | None) -> None:
    assert instance_model().model_validate_json(f'{{"age": 1, "id": {sent}}}').id == kept


@pytest.mark.parametrize("sent", ['""', "true", "1.5", f'"{"x" * 257}"', str(2**63), "[1]"])
def test_a_bad_business_id_is_refused(sent: str) -> None:
    with pytest.raises(ValidationError, match="id"):
        instance_model().model_validate_json(f'{{"age": 1, "id": {sent}}}')


@pytest.mark.parametrize("name", ["id", "key"])
def test_a_feature_named_like_an_instance_field_is_refused_at_start(name: str) -> None:
    with pytest.raises(ValueError, match=f"feature named '{name}'.*reserved"):
        build_request_models((FeatureField("age", "int"), FeatureField(name, "str")), 10)


def test_feedback_names_its_prediction_by_exactly_one_reference() -> None:
    assert FeedbackItem.model_validate({"id": 42, "label": 1}).id == "42"
    assert FeedbackItem.model_validate({"request_id": "abc", "label": "yes"}).id is None
    for body in ({"label": 1}, {"id": "a", "request_id": "b", "label": 1}):
        with pytest.raises(ValidationError, match=r"exactly one of 'request_id'.*and 'id'"):
            FeedbackItem.model_validate(body)


def test_a_regression_label_is_a_finite_number_kept_as_a_float() -> None:
    assert RegressionFeedbackItem.model_validate({"id": 1, "label": 151}).label == 151.0
    assert type(RegressionFeedbackItem.model_validate({"id": 1, "label": 151}).label) is float
    for label in ("151", True, float("nan"), float("inf"), 10**309, None):
        with pytest.raises(ValidationError) as error:
            RegressionFeedbackItem.model_validate({"id": 1, "label": label})
        assert all(problem["loc"][0] == "label" for problem in error.value.errors())
