"""A replica's cache of answers, keyed by the model version and the validated instance.

Off by default (`DRIFTLOOP_PREDICTION_CACHE_SIZE=0`). An answer depends on nothing but the
version that gave it and the instance's feature values, so the key is exactly those: the
version the canary split chose for the request, and the validated values in the
signature's order (JSON key order, the instance's `id` and its routing `key` change
nothing). The replica empties it whenever a slot changes version, so nothing of an old
version outlives a swap, rollback included; a lookup still made before the swap cannot
store its answer after it (`generation`).

Every call runs on the replica's event loop: `TTLCache` is not thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from cachetools import TTLCache

from serving.schemas import FeatureField

# One instance's answer: its prediction, its class probabilities (None for a regressor) and
# its unseen categorical features (None when there is none).
Answer = tuple[Any, list[float] | None, str | None]


@dataclass
class Lookup:
    """One request's instances as found in the cache; `missing` are the positions the
    model must answer (`PredictionCache.fill`)."""

    keys: list[Hashable]
    answers: list[Answer | None]
    missing: list[int]
    generation: int

    def columns(self) -> tuple[list[Any], list[list[float]] | None, list[str | None]]:
        """Predictions, probabilities (None for a regressor) and unseen flags, in order."""
        answers: list[Answer] = self.answers  # type: ignore[assignment]  # all filled
        labels = [a[0] for a in answers]
        probabilities = None if answers[0][1] is None else [a[1] for a in answers]
        return labels, probabilities, [a[2] for a in answers]  # type: ignore[misc]


class PredictionCache:
    """LRU of at most `size` answers, each kept `ttl_s` seconds; `size` 0 turns it off."""

    def __init__(
        self,
        features: Sequence[FeatureField],
        size: int,
        ttl_s: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.values = itemgetter(*(f.name for f in features))
        self.answers: TTLCache[Hashable, Answer] | None = (
            TTLCache(size, ttl_s, timer) if size > 0 else None
        )
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self.answers is not None

    def key(self, version: str, row: dict[str, Any]) -> Hashable:
        """What decides the answer: the version and the validated feature values."""
        return version, self.values(row)

    def lookup(self, version: str, rows: list[dict[str, Any]]) -> Lookup:
        """The cached answers of `rows` from `version`, and which ones it has none for."""
        assert self.answers is not None, "the prediction cache is off"
        get = self.answers.get
        keys = [self.key(version, row) for row in rows]
        answers = [get(k) for k in keys]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        return Lookup(keys, answers, missing, self.generation)

    def fill(
        self,
        lookup: Lookup,
        labels: list[Any],
        probabilities: list[list[float]] | None,
        unseen: list[str | None],
    ) -> None:
        """The model's answers to `lookup.missing`, into the lookup and, unless a swap
        emptied the cache since the lookup, into the cache."""
        store = self.answers if lookup.generation == self.generation else None
        for j, i in enumerate(lookup.missing):
            answer = (labels[j], None if probabilities is None else probabilities[j], unseen[j])
            lookup.answers[i] = answer
            if store is not None:
                store[lookup.keys[i]] = answer

    def clear(self) -> None:
        """Forget every answer (a slot changed version)."""
        self.generation += 1
        if self.answers is not None:
            self.answers.clear()

    def __len__(self) -> int:
        """Answers held, expired ones included until the next store purges them."""
        return 0 if self.answers is None else len(self.answers)
