"""The slice and fairness review on real models' outputs, and what the gate does with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from driftloop.metrics import all_scores, metric_named
from driftloop.promotion import decide, with_review
from driftloop.review import review, slice_columns
from driftloop.schema import infer_schema
from driftloop.training import DEFAULT_TRIALS, Evaluation, make_model
from tests.datasets import TARGET, friedman

RMSE, ACCURACY = metric_named("rmse"), metric_named("accuracy")


@pytest.fixture(scope="module")
def fitted():
    train, holdout = train_test_split(friedman(4000, seed=5), test_size=0.4, random_state=0)
    schema = infer_schema(train, TARGET)
    x, y = train[schema.feature_names], train[TARGET]
    boosting, ridge = DEFAULT_TRIALS["regression"]
    good = make_model(boosting, schema, seed=0).fit(x, y)
    weak = make_model(ridge, schema, seed=0).fit(x, y)
    return schema, holdout, good, weak


def test_a_challenger_better_overall_but_worse_on_one_region_is_refused(fitted) -> None:
    schema, holdout, good, weak = fitted
    x, y = holdout[schema.feature_names], holdout[TARGET]
    # The challenger: the boosting model, except that for the west it answers like the
    # linear one, two errors off; still better than the linear champion on average.
    west = (x["region"] == "west").to_numpy()
    challenger = good.predict(x)
    challenger[west] = weak.predict(x[west]) + 2.0
    champion = weak.predict(x)
    ours, theirs = (
        Evaluation(all_scores(y, out, ()), "rmse", len(y)) for out in (challenger, champion)
    )
    assert ours.value < theirs.value  # better overall
    columns = slice_columns(schema, x, ())
    assert columns == ["region"]  # four levels: a slice column by default
    judged = review(x, y, (challenger, champion), (), RMSE, columns, (), 30, 0.05)
    assert [(g.column, g.level) for g in judged.worse] == [("region", "west")]
    gap = judged.worse[0]
    assert gap.rows == int(west.sum()) and gap.challenger > gap.champion
    passed = decide("2", (ours, None), "1", (theirs, None), margin=0.002, floor=None)
    assert passed.promote
    refused = with_review(passed, judged, "auto")
    assert not refused.promote and "region=west" in refused.reason
    flagged = with_review(passed, judged, "manual")
    assert flagged.promote and flagged.flagged and "region=west" in flagged.reason
    assert "| region=west |" in judged.markdown() and "**yes**" in judged.markdown()
    # The same challenger without the damage is not held back by any slice.
    fine = review(x, y, (good.predict(x), champion), (), RMSE, columns, (), 30, 0.05)
    assert not fine.worse and with_review(passed, fine, "auto") == passed


def test_disparities_are_fairlearns_and_match_a_hand_count() -> None:
    """Loan decisions for two groups: selection rates 0.6 and 0.2, by hand."""
    group = pd.Series(["a"] * 5 + ["b"] * 5, name="group")
    truth = pd.Series([1, 1, 0, 0, 1, 1, 0, 0, 0, 1])
    decided = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    probabilities = np.column_stack([1 - decided, decided]).astype(float)
    x = pd.DataFrame({"group": group})
    judged = review(x, truth, (probabilities, probabilities), (0, 1), ACCURACY, [], ["group"], 1, 0)
    numbers = {d.name: d for d in judged.disparities}
    parity = numbers["demographic_parity_difference"]
    assert parity.value == pytest.approx(0.6 - 0.2)
    assert parity.by_group == pytest.approx({"a": 0.6, "b": 0.2})
    # true positive rates a 2/3, b 0/2; false positive rates a 1/2, b 1/3: the larger gap
    assert numbers["equalized_odds_difference"].value == pytest.approx(2 / 3)
    accuracy = numbers["accuracy_spread"]
    assert accuracy.by_group == pytest.approx({"a": 0.6, "b": 0.4})
    assert accuracy.value == pytest.approx(0.2)
    tags = judged.as_tags()
    assert tags["driftloop.review.group.demographic_parity_difference"] == "0.400000"
