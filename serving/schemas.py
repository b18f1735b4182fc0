"""Request and response models; the instance model is built from the model signature.

The signature of the version being served decides the fields, so the OpenAPI schema, the
422s and the DataFrame handed to the pipeline always agree with what was trained. Its task
decides the answer and the feedback: labels and probabilities for a classifier, one float
per instance (and an observed number as feedback) for a regressor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    create_model,
    model_validator,
)

FeatureType = Literal["int", "float", "str", "bool"]
# A class label as the log keeps it (a string); longer than any label a table would have.
MAX_LABEL_CHARS = 256


def _bounded_label(value: int | float | str | bool) -> int | float | str | bool:
    """An integer label is a 64-bit class label as training stores it, not any JSON number."""
    if type(value) is int and not -(2**63) <= value < 2**63:
        raise ValueError("an integer label must fit in 64 bits")
    return value


Label = Annotated[
    StrictInt | StrictFloat | Annotated[str, Field(max_length=MAX_LABEL_CHARS)] | StrictBool,
    AfterValidator(_bounded_label),
]

# MLflow ColSpec types to ours; anything else is refused at start-up, not at request time.
_MLFLOW_TYPES: dict[str, FeatureType] = {
    "integer": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "boolean": "bool",
}


def _blank_is_missing(value: str) -> str | None:
    """An empty or whitespace-only string is a missing value, as ingestion reads it."""
    return value if value.strip() else None


def _finite_float(value: int | float) -> float:
    """A JSON number as the float64 the model and the log take: an integer literal is
    converted here (10**309 would overflow later, as a 500 or a log batch lost), and what
    float64 cannot hold, NaN and inf are a 422."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("Input should be within the float64 range (±1.8e308)") from None
    if not math.isfinite(number):
        raise ValueError("Input should be a finite number")
    return number


_ANNOTATIONS: dict[FeatureType, Any] = {
    # The log and the model store 64-bit integers: larger ones are a 422, not a lost record.
    "int": Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)],
    # JSON has one number type: an integer literal is a valid float, NaN and inf are not.
    "float": Annotated[StrictInt | StrictFloat, AfterValidator(_finite_float)],
    "str": Annotated[str, Field(min_length=0, max_length=256), AfterValidator(_blank_is_missing)],
    "bool": StrictBool,
}
# Instance fields that are not features; a signature with a feature of either name is refused.
RESERVED = ("id", "key")

# A business id (the loan or order id a label source knows), echoed and logged as a string;
# an integer one is a database's 64-bit id (anything longer can be sent as a string).
BusinessId = (
    Annotated[str, Field(min_length=1, max_length=256)]
    | Annotated[StrictInt, Field(ge=-(2**63), lt=2**63), AfterValidator(str)]
)


@dataclass(frozen=True)
class FeatureField:
    """One model input; `nullable` ones may be null or omitted (the model sees missing)."""

    name: str
    type: FeatureType
    nullable: bool = False


def features_from_signature(signature: Any) -> tuple[FeatureField, ...]:
    """The model's input columns in order, from an `mlflow.models.ModelSignature`."""
    if signature is None or signature.inputs is None:
        raise ValueError("the model version has no input signature; it cannot be served")
    fields = []
    for spec in signature.inputs.to_dict():
        kind = _MLFLOW_TYPES.get(str(spec.get("type")))
        if kind is None or "name" not in spec:
            raise ValueError(f"unsupported signature column {spec}")
        fields.append(FeatureField(spec["name"], kind, nullable=not spec.get("required", True)))
    return tuple(fields)


@dataclass(frozen=True)
class RequestModels:
    """The pydantic classes one deployment validates and documents with."""

    instance: type[BaseModel]
    predict: type[BaseModel]
    feedback: Any  # the feedback route's body (`feedback_body`)
    response: type[BaseModel]  # what the predict route answers, for the OpenAPI schema


def build_request_models(
    features: tuple[FeatureField, ...], max_instances: int, regression: bool = False
) -> RequestModels:
    """Strict per-feature types (null or omitted only where nullable), unknown fields refused,
    an optional business `id` and routing `key`; feedback and answer as the task has them."""
    clashes = [f.name for f in features if f.name in RESERVED]
    if clashes:
        raise ValueError(
            f"the model has a feature named {clashes[0]!r}, which is reserved for the "
            f"instance's {'business id' if clashes[0] == 'id' else 'routing key'}; exclude it "
            "from the features (DRIFTLOOP_ID_COLUMNS or DRIFTLOOP_IGNORE_COLUMNS) and retrain"
        )
    definitions: dict[str, Any] = {
        f.name: (_ANNOTATIONS[f.type] | None, None) if f.nullable else (_ANNOTATIONS[f.type], ...)
        for f in features
    }
    definitions["id"] = (
        BusinessId | None,
        Field(default=None, description="A business id: echoed, logged, usable for feedback."),
    )
    definitions["key"] = (
        str | None,
        Field(default=None, max_length=256, description="Makes canary routing sticky."),
    )
    instance = create_model(
        "Instance", __config__=ConfigDict(extra="forbid", frozen=True), **definitions
    )
    predict = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        instances=(list[instance], Field(min_length=1, max_length=max_instances)),  # type: ignore[valid-type]
    )
    return RequestModels(
        instance=instance,
        predict=predict,
        feedback=feedback_body(max_instances, regression),
        response=RegressionResponse if regression else PredictResponse,
    )


# The fields every answer carries about the version that gave it.
VERSION_DESCRIPTION = "The MLflow registry version that answered (also the X-Model-Version header)."
SEMVER_DESCRIPTION = (
    "Its semantic version (`driftloop.semver`): a new MAJOR changes the request contract; "
    "null for a version registered without one."
)


class PredictResponse(BaseModel):
    """KServe V1 answer, plus class probabilities and the ids feedback refers to."""

    predictions: list[Label]
    probabilities: list[list[float]] = Field(
        description="Per instance, one probability per class, in the order of `classes`."
    )
    classes: list[Label] = Field(
        description="The class labels, in the order of each instance's probabilities."
    )
    ids: list[str | None]
    model_version: str = Field(description=VERSION_DESCRIPTION)
    model_semver: str | None = Field(description=SEMVER_DESCRIPTION)
    request_id: str


class RegressionResponse(BaseModel):
    """KServe V1 answer of a regression model: one predicted value per instance, no class
    probabilities; the ids feedback refers to."""

    predictions: list[float] = Field(
        description="The predicted value of each instance, in order (a float64)."
    )
    ids: list[str | None]
    model_version: str = Field(description=VERSION_DESCRIPTION)
    model_semver: str | None = Field(description=SEMVER_DESCRIPTION)
    request_id: str


# What a regression model's feedback carries: the observed value, a finite number.
Observed = Annotated[StrictInt | StrictFloat, AfterValidator(_finite_float)]


class FeedbackItem(BaseModel):
    """A label for one answer, named by the answer's `request_id` or the instance's `id`."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, min_length=1, max_length=64)
    id: BusinessId | None = None
    label: Label

    @model_validator(mode="after")
    def _one_reference(self) -> FeedbackItem:
        if (self.request_id is None) == (self.id is None):
            raise ValueError(
                "give exactly one of 'request_id' (from the answer) and 'id' (the business id "
                "sent with the instance)"
            )
        return self


class RegressionFeedbackItem(FeedbackItem):
    """The observed value for one answer of a regression model: a JSON number (not a
    string, not a bool), within float64 and finite; kept as that float."""

    label: Observed  # type: ignore[assignment]


def feedback_body(max_items: int, regression: bool = False) -> Any:
    """The feedback route's body: one item, or a list of 1 to `max_items` (more is a 413).

    The branch is chosen by the JSON shape, so an error names only the branch sent
    (`body.item…` or `body.items…`), not both union members.
    """
    item = RegressionFeedbackItem if regression else FeedbackItem
    return Annotated[
        Annotated[item, Tag("item")]
        | Annotated[list[item], Field(min_length=1, max_length=max_items), Tag("items")],  # type: ignore[valid-type]
        Discriminator(lambda value: "items" if isinstance(value, list) else "item"),
    ]


class FeedbackResponse(BaseModel):
    accepted: int


class RoutingUpdate(BaseModel):
    """An admin change of routing; a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    canary_weight: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    shadow: bool | None = None


class ModelState(BaseModel):
    alias: str
    version: str
    sha256: str
    source: Literal["registry", "cache"]
    task: Literal["classification", "regression"]
    semver: str | None = Field(
        default=None, description="The version's `driftloop.semver` tag (null: none)."
    )


class Health(BaseModel):
    """What `/readyz` tells anyone: whether this replica takes traffic."""

    ready: bool
    detail: str


class Readiness(Health):
    """`/readyz` for a viewer or admin key (or for anyone when no key is configured)."""

    champion: ModelState | None = None
    challenger: ModelState | None = None
    canary_weight: float
    shadow: bool
    last_swap_ms: float | None = None


class LoadFailure(BaseModel):
    """A version an alias names that this replica could not load; it is tried again."""

    alias: str
    version: str
    reason: str
    attempts: int
    retry_in_s: float


class AdminState(Readiness):
    """`GET /admin/state`: the replica as an operator sees it (key ids, never keys)."""

    replica: str
    refused: list[dict[str, str]]
    load_failures: list[LoadFailure]
    key_ids: dict[str, list[str]] = Field(
        description="Per role the ids (first 8 hex digits of the SHA-256) of accepted keys."
    )
    request_id_secret: str = Field(description="Where the request-id secret comes from.")
    max_queued_requests: int
