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
