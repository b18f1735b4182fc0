"""Real tables built from datasets that ship inside installed packages (no downloads).

Each builder returns one DataFrame with the features and a `label` column, as a team would
drop it into the landing zone. The helpers below add what real tables have: gaps, and
columns that must not become features (ids, timestamps, free text, constants).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from river import datasets as river_datasets
from sklearn import datasets as sklearn_datasets

TARGET = "label"


def breast_cancer() -> pd.DataFrame:
    """569 tumours, 30 measurements, binary (malignant/benign, 37 % malignant)."""
    bunch = sklearn_datasets.load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame.assign(**{TARGET: np.asarray(bunch.target_names)[bunch.target]})


def wine() -> pd.DataFrame:
    """178 wines, 13 measurements, three cultivars (multiclass)."""
    bunch = sklearn_datasets.load_wine(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    return frame.assign(**{TARGET: np.asarray(bunch.target_names)[bunch.target]})


def phishing() -> pd.DataFrame:
    """1,250 web pages from river, 9 features, a bool target (is it phishing?)."""
    rows = [{**x, TARGET: bool(y)} for x, y in river_datasets.Phishing()]
    return pd.DataFrame(rows)


def imbalanced(frame: pd.DataFrame, minority: str, share: float, seed: int) -> pd.DataFrame:
    """Keep every other class and just enough `minority` rows for it to be `share` of all."""
    rest = frame[frame[TARGET] != minority]
    keep = round(share * len(rest) / (1 - share))
    rare = frame[frame[TARGET] == minority].sample(keep, random_state=seed)
    return pd.concat([rest, rare]).sample(frac=1, random_state=seed).reset_index(drop=True)


def with_gaps(frame: pd.DataFrame, columns: list[str], share: float, seed: int) -> pd.DataFrame:
    """Blank `share` of the cells of `columns` at random, as sensor gaps or blank fields."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for name in columns:
        out.loc[rng.random(len(out)) < share, name] = np.nan
    return out


def with_roles(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Columns a real export has beside the features: a business id, a timestamp, free
    text, a constant, and a bool feature (with gaps) derived from a measurement."""
    rng = np.random.default_rng(seed)
    first = frame.columns[0]
    flag = (frame[first] > frame[first].median()).astype(object)
    flag[rng.random(len(frame)) < 0.1] = None
    seen = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(frame)), "min")
    return frame.assign(
        case_id=[f"C-{seed}-{i:06d}" for i in range(len(frame))],
        seen_at=seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
        note=[f"reviewed by {rng.integers(1e9)} on shift {i}" for i in range(len(frame))],
        source="lab-export",
        above_median=flag,
    )


def diabetes() -> pd.DataFrame:
    """442 patients, 10 measurements, a disease-progression score a year later (regression)."""
    bunch = sklearn_datasets.load_diabetes(as_frame=True)
    return bunch.frame.rename(columns={"target": TARGET})


def trump_approval() -> pd.DataFrame:
    """1,001 days from river: five pollsters' numbers and the day, the approval average."""
    rows = [{**x, TARGET: y} for x, y in river_datasets.TrumpApproval()]
    return pd.DataFrame(rows)


def friedman(rows: int, seed: int) -> pd.DataFrame:
    """scikit-learn's Friedman #1 (10 inputs, 5 of them noise) with what a real table has
    beside: a region as text that shifts the target, and gaps in two inputs."""
    x, y = sklearn_datasets.make_friedman1(rows, n_features=10, noise=1.0, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)])
    rng = np.random.default_rng(seed)
    regions = np.array(["north", "south", "east", "west"])
    region = regions[rng.integers(0, 4, rows)]
    offset = pd.Series(region).map({"north": 0.0, "south": 2.0, "east": -1.5, "west": 4.0})
    frame = with_gaps(frame, ["x1", "x7"], share=0.1, seed=seed)
    return frame.assign(region=region, **{TARGET: y + offset.to_numpy()})


def plain_output(x: pd.DataFrame, y: pd.Series, holdout: pd.DataFrame, task: str) -> tuple:
    """What a plain scikit-learn model says on `holdout`: HistGradientBoosting at its
    defaults fitted on (x, y), text columns as categories, bools as numbers. Returns the
    output the metrics take (probabilities or predictions) and the classes (() for
    regression): the baseline a champion is compared with on the same split."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    text = [c for c in x.columns if x[c].dtype == object and not _bools(x[c])]
    numbers = [c for c in x.columns if c not in text]

    def prepared(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out[numbers] = out[numbers].astype(float)
        for name in text:
            out[name] = pd.Categorical(frame[name], categories=sorted(x[name].dropna().unique()))
        return out

    if task == "regression":
        model = HistGradientBoostingRegressor(random_state=0, categorical_features="from_dtype")
        return model.fit(prepared(x), y).predict(prepared(holdout)), ()
    model = HistGradientBoostingClassifier(random_state=0, categorical_features="from_dtype")
    model.fit(prepared(x), y)
    return model.predict_proba(prepared(holdout)), model.classes_


def _bools(column: pd.Series) -> bool:
    values = column.dropna()
    return len(values) > 0 and values.map(type).eq(bool).all()
