"""Asset values stored as JSON records and Parquet tables, through a real Dagster run."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from driftloop.data import BATCH_COLUMN, build_training_set
from driftloop.schema import infer_schema
from driftloop.storage import Folder
from driftloop.training import Evaluation
from resources.values import (
    RECORDS,
    VALUE_FILE,
    UntrustedValue,
    ValueStore,
    decode,
    encode,
    read_table,
)
from tests.datasets import TARGET, wine, with_gaps


def _training_set():
    frame = with_gaps(wine(), ["alcohol"], share=0.2, seed=0)
    schema = infer_schema(frame, TARGET)
    return build_training_set(frame.assign(**{BATCH_COLUMN: "b1"}), schema, 0.2, seed=0)


def test_a_training_set_round_trips_through_a_dagster_run(tmp_path: Path) -> None:
    """Two assets in one job: the second reads what the first stored, equal in every field
    (frames with their index, dtypes and gaps; the schema; tuples stay tuples)."""
    training = _training_set()
    evaluation = Evaluation({"accuracy": 0.9, "log_loss": float("nan")}, "accuracy", 36)

    @dg.asset
    def produced() -> tuple:
        return (training, evaluation)

    @dg.asset
    def consumed(produced: tuple) -> None:
        stored_training, stored_evaluation = produced
        assert stored_training.schema == training.schema
        assert stored_training.batches == training.batches
        for name in ("train", "holdout", "recent"):
            pd.testing.assert_frame_equal(getattr(stored_training, name), getattr(training, name))
        assert stored_evaluation.scores["accuracy"] == 0.9
        assert stored_evaluation.rows == 36 and stored_evaluation.metric == "accuracy"

    store = ValueStore(location=str(tmp_path / "io"))
    result = dg.materialize([produced, consumed], resources={"io_manager": store})
    assert result.success
    files = sorted(p.suffix for p in (tmp_path / "io" / "produced").iterdir())
    assert set(files) == {".json", ".parquet"}  # no pickle anywhere
    # Writing again keeps the previous document's tables (a reader may hold it) and
    # removes only what neither document names.
    assert dg.materialize([produced], resources={"io_manager": store}).success
    assert len(list((tmp_path / "io" / "produced").glob("*.parquet"))) == files.count(".parquet")


def test_a_planted_value_naming_another_type_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "io" / "produced"
    folder.mkdir(parents=True)
    planted = {"__record__": "Popen", "fields": {"args": ["touch", str(tmp_path / "pwned")]}}
    (folder / VALUE_FILE).write_text(json.dumps(planted))

    @dg.asset(deps=[])
    def consumed(produced: object) -> None:
        raise AssertionError("an untrusted value was loaded")

    with pytest.raises(UntrustedValue, match="unknown type 'Popen'"):
        dg.materialize(
            [consumed, dg.AssetSpec("produced")],
            resources={"io_manager": ValueStore(location=str(tmp_path / "io"))},
        )
    assert not (tmp_path / "pwned").exists()
    store = Folder(str(folder))
    for name in ("../../etc/passwd", "model.pkl"):
        with pytest.raises(UntrustedValue, match="not a table this store wrote"):
            decode({"__table__": name}, lambda table: read_table(store, table))


def test_only_known_records_and_plain_data_are_written() -> None:
    class Stranger:
        pass

    with pytest.raises(UntrustedValue, match="Stranger cannot be stored"):
        encode({"x": Stranger()}, {})
    with pytest.raises(UntrustedValue, match="string keys"):
        encode({1: "a"}, {})
    assert "TrainingSet" in RECORDS and "Candidate" in RECORDS


def test_a_pickle_left_by_an_older_release_is_replaced_never_loaded(tmp_path: Path) -> None:
    """The stock IO manager kept each value as one pickle file where a folder goes now."""
    (tmp_path / "io").mkdir()
    (tmp_path / "io" / "produced").write_bytes(b"\x80\x04pickled")
    store = ValueStore(location=str(tmp_path / "io"))

    @dg.asset
    def consumed(produced: object) -> None:
        raise AssertionError("the old pickle was loaded")

    with pytest.raises(UntrustedValue, match="stored as a pickle by an older release"):
        dg.materialize([consumed, dg.AssetSpec("produced")], resources={"io_manager": store})

    @dg.asset
    def produced() -> dict:
        return {"rows": 3}

    assert dg.materialize([produced], resources={"io_manager": store}).success
    assert (tmp_path / "io" / "produced" / VALUE_FILE).is_file()
