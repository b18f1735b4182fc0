"""Fold scoring in worker processes must give exactly what fitting in-process gives."""

from driftloop.hpo import fold_scorer
from driftloop.schema import infer_schema
from driftloop.simulate import LoanStream
from driftloop.training import Folds

PARAMS = {
    "family": "hist_gradient_boosting",
    "learning_rate": 0.1,
    "max_iter": 30,
    "max_leaf_nodes": 16,
    "min_samples_leaf": 20,
    "l2_regularization": 1e-3,
}


def test_pooled_folds_score_exactly_as_in_process() -> None:
    frame = LoanStream(seed=3).take_frame(900, "label")
    schema = infer_schema(frame, "label")
    folds = Folds(schema, frame[schema.feature_names], frame["label"], folds=3, seed=42)
    here = [folds.score(PARAMS, fold) for fold in range(len(folds))]
    with fold_scorer(folds, parallel=2, threads=1) as pooled:
        assert pooled is not folds and len(pooled) == 3
        assert [pooled.score(PARAMS, fold) for fold in range(3)] == here
    assert all(0.5 < score <= 1 for score in here)
