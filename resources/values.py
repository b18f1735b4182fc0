"""Asset values on shared storage as data, never as code: JSON records and Parquet tables.

Dagster's stock IO managers pickle each value to the home or the bucket, and the next step
unpickles it: whoever can write there (another container with the bucket's credentials, a
reachable Ray node) plants a pickle that runs with the training step's Postgres and MLflow
credentials. Here a value is one JSON document that names its record types from a fixed
set (`RECORDS`), with its DataFrames as Parquet files beside it; loading builds only those
types, so a planted file can at worst fail to load, never run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from driftloop.candidate import Candidate
from driftloop.data import TrainingSet
from driftloop.hpo import SearchResult
from driftloop.promotion import GateDecision
from driftloop.registry import VersionInfo
from driftloop.schema import DatasetSchema, ExcludedColumn, FeatureSpec
from driftloop.storage import Folder
from driftloop.training import Evaluation

# Every record type an asset value may contain; anything else is refused on write and read.
RECORDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TrainingSet,
        DatasetSchema,
        FeatureSpec,
        ExcludedColumn,
        SearchResult,
        Candidate,
        VersionInfo,
        Evaluation,
        GateDecision,
    )
}
VALUE_FILE = "value.json"


class UntrustedValue(ValueError):
    """A stored value that names a type outside `RECORDS`, or is not what we wrote."""


def encode(value: Any, tables: dict[str, bytes]) -> Any:
    """`value` as JSON-ready data; each DataFrame goes to `tables` (name: Parquet bytes),
    named by its content's digest, and is referred to by that name."""
    if isinstance(value, pd.DataFrame):
        buffer = io.BytesIO()
        value.to_parquet(buffer)  # keeps the index and the dtypes pandas can round-trip
        data = buffer.getvalue()
        name = f"table-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        tables[name] = data
        return {"__table__": name}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value).__name__
        if RECORDS.get(kind) is not type(value):
            raise UntrustedValue(f"{kind} is not a record type asset values may hold")
        fields = {f.name: encode(getattr(value, f.name), tables) for f in dataclasses.fields(value)}
        return {"__record__": kind, "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tables) for v in value]}
    if isinstance(value, list):
        return [encode(v, tables) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UntrustedValue("only string keys are stored")
        return {"__dict__": {k: encode(v, tables) for k, v in value.items()}}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise UntrustedValue(f"a {type(value).__name__} cannot be stored as an asset value")


def decode(data: Any, read_table: Any) -> Any:
    """The value `encode` wrote; `read_table(name)` returns one of its tables."""
    if isinstance(data, list):
        return [decode(v, read_table) for v in data]
    if not isinstance(data, dict):
        return data
    if "__table__" in data:
        return read_table(data["__table__"])
    if "__tuple__" in data:
        return tuple(decode(v, read_table) for v in data["__tuple__"])
    if "__dict__" in data:
        return {k: decode(v, read_table) for k, v in data["__dict__"].items()}
    kind = RECORDS.get(str(data.get("__record__")))
    if kind is None:
        raise UntrustedValue(f"stored value names an unknown type {data.get('__record__')!r}")
    return kind(**{k: decode(v, read_table) for k, v in data["fields"].items()})


def _table_names(data: Any) -> set[str]:
    """The tables a stored document refers to."""
    if isinstance(data, list):
        return set().union(*(_table_names(v) for v in data))
    if isinstance(data, dict):
        if "__table__" in data:
            return {data["__table__"]}
        return set().union(*(_table_names(v) for v in data.values()))
    return set()


class ValueStore(dg.ConfigurableIOManager):
    """Asset values under `location` (a folder, or `s3://bucket/prefix`), one directory per
    asset (and partition): the tables first, then `value.json`, which names them, so a
    reader sees a whole value or the previous one; tables no value names are removed."""

    location: str
    s3_endpoint_url: str | None = None

    def _folder(self, context: dg.InputContext | dg.OutputContext) -> Folder:
        return Folder(self.location, self.s3_endpoint_url).child(
            "/".join(context.get_asset_identifier())
        )

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        folder = self._folder(context)
        legacy = folder.local_path
        if legacy is not None and legacy.is_file():  # an older release's pickle: never read
            legacy.unlink()
        tables: dict[str, bytes] = {}
        document = json.dumps(encode(obj, tables)).encode()
        # A reader may hold the previous document still: its tables stay one more write.
        keep = set(tables) | (
            _table_names(json.loads(folder.read_bytes(VALUE_FILE)))
            if folder.info(VALUE_FILE)
            else set()
        )
        for name, data in tables.items():
            if folder.info(name) is None:  # named by content: an existing one is this one
                folder.write_bytes(name, data)
        folder.write_bytes(VALUE_FILE, document)
        for stale in folder.files((".parquet",)):
            if stale.name not in keep:
                folder.delete(stale.name)
        context.add_output_metadata({"stored_at": f"{folder.url}/{VALUE_FILE}"})

    def load_input(self, context: dg.InputContext) -> Any:
        folder = self._folder(context)
        legacy = folder.local_path
        if legacy is not None and legacy.is_file():
            raise UntrustedValue(
                f"{legacy} was stored as a pickle by an older release and is not loaded: "
                "materialize the upstream asset again (a training run does)"
            )
        data = json.loads(folder.read_bytes(VALUE_FILE))
        return decode(data, lambda name: read_table(folder, name))


def read_table(folder: Folder, name: str) -> pd.DataFrame:
    """One of a value's tables, by a name this store gives (no other file is read)."""
    if not (name.startswith("table-") and name.endswith(".parquet")):
        raise UntrustedValue(f"{name!r} is not a table this store wrote")
    return pd.read_parquet(io.BytesIO(folder.read_bytes(name)))
