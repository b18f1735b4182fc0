"""The Ray Serve application: one ingress deployment that routes, batches and answers.

Champion and challenger live in the same replica as the HTTP ingress: on a small machine
every extra deployment hop costs more than the model call itself (see docs/benchmarks.md),
and keeping both models in-process is what makes the alias swap a single assignment.
Replicas scale out horizontally; each watches the registry on its own, and an MLflow
registry webhook wakes them all at once (`serving/registry_events.py`).

A deployment serves one task, its first champion's: a classifier answers labels and
probabilities, a regressor one float per instance. A version of the other task is refused
(as a version with another signature is), so the OpenAPI schema, the feedback the routes
take and the log's meaning never change under a running deployment.
"""

import asyncio
import dataclasses
import gc
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driftloop.audit import AuditTrail
from driftloop.registry import (
    CHALLENGER,
    CHAMPION,
    ArtifactIntegrityError,
    ModelRecord,
    Registry,
    RegistryError,
    configure_tracking,
)
from driftloop.settings import Settings
from serving.cache import PredictionCache
from serving.fast_ingress import FastPredict
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelRejected, ModelStore
from serving.prediction_log import (
    FEEDBACK,
    FEEDBACK_SCHEMA,
    PREDICTIONS,
    ParquetLog,
    prediction_schema,
)
from serving.registry_events import (
    REGISTRY_EVENTS,
    EventAnswer,
    Refused,
    RegistryEvents,
    describe,
    ensure_webhook,
    verify,
    webhook_secret,
)
from serving.router import (
    CHALLENGER_ROUTE,
    SHADOW_ROUTE,
    SPLIT_TAG,
    Route,
    RoutingConfig,
    SharedSplit,
    TrafficSplit,
    choose_route,
)
from serving.schemas import (
    AdminState,
    FeedbackItem,
    FeedbackResponse,
    Health,
    LoadFailure,
    ModelState,
    Readiness,
    RoutingUpdate,
    build_request_models,
)
from serving.security import (
    ADMIN_ROLE,
    FEEDBACK_ROLE,
    GRANTS,
    VIEWER_ROLE,
    AuditLog,
    Caller,
    KeyRing,
    RequestIds,
    Role,
    key_id,
)

logger = logging.getLogger("ray.serve")

# One OpenMP/BLAS thread per replica: two replicas with default threads on two cores
# oversubscribe and lose ~20x throughput (measured while planning, see the issue).
PINNED_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# A replica must not hang in MLflow's HTTP retries when the server is down: fail fast and
# keep serving what it has.
MLFLOW_FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# Serve's throughput mode buffers a replica's log records and writes them 1,000 at a time
# (or on an ERROR); with the access log off (see `build_app`) our own rare lines, such as a
# swap, would sit in memory for hours.
UNBUFFERED_LOG = {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"}
# A version whose load failed (the artifact store down, an artifact deleted) is tried again
# after LOAD_RETRY_S, doubling per failure up to LOAD_RETRY_MAX_S: not on every poll.
LOAD_RETRY_S = 2.0
LOAD_RETRY_MAX_S = 300.0
# Refusals that retrying cannot fix: the artifact's bytes or the model itself are wrong.
PERMANENT = (ModelRejected, ArtifactIntegrityError, ValueError, TypeError)
# A URL's user and password (`http://user:secret@host`), kept out of events and logs.
CREDENTIALS_IN_URL = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
PREDICT_PATH = "/v1/models/{model}:predict"


class ServeArgs(BaseModel):
    """Application arguments (the `args:` of serve_config.yaml); unset means from Settings."""

    model_config = ConfigDict(extra="forbid")

    home: str | None = None
    tracking_uri: str | None = None
    model_name: str | None = None
    num_replicas: int | None = Field(default=None, ge=1)
    replica_cpus: float = Field(default=1.0, gt=0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=1)
    canary_weight: float | None = Field(default=None, ge=0, le=1)
    shadow: bool = False
    max_batch_rows: int | None = Field(default=None, ge=1)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=1)
    poll_interval_s: float | None = Field(default=None, gt=0)
    prediction_cache_size: int | None = Field(default=None, ge=0)
    prediction_cache_ttl_s: float | None = Field(default=None, gt=0)

    def settings(self) -> Settings:
        overrides = {"home": self.home, "tracking_uri": self.tracking_uri}
        overrides["model_name"] = self.model_name
        return Settings(**{k: v for k, v in overrides.items() if v is not None})

    def routing(self, settings: Settings) -> RoutingConfig:
        weight = settings.canary_weight if self.canary_weight is None else self.canary_weight
        return RoutingConfig(
            canary_weight=weight,
            shadow=self.shadow,
            max_batch_rows=self.max_batch_rows or settings.serve_max_batch_rows,
            batch_wait_timeout_s=self.batch_wait_timeout_s,
        )

    def prediction_cache(self, settings: Settings) -> tuple[int, float]:
        """The prediction cache's size (0: off) and TTL."""
        size, ttl_s = self.prediction_cache_size, self.prediction_cache_ttl_s
        return (
            settings.prediction_cache_size if size is None else size,
            settings.prediction_cache_ttl_s if ttl_s is None else ttl_s,
        )


class RollbackRequest(BaseModel):
    """The version being rolled back: a retried call then changes nothing."""

    model_config = ConfigDict(extra="forbid")

    expected_champion: str | None = Field(default=None, max_length=32)


class BodyLimit:
    """A 413 for a request body over `max_bytes`, before anything parses it: by its
    Content-Length before a byte is read, and by counting what arrives (a chunked body, or a
    client that lies about its length)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self.detail = f"the request body is over {max_bytes} bytes (DRIFTLOOP_SERVE_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            self.on_refused()
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes an HTTPException raised while reading the body through.
                self.on_refused()
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)


class LoadShed:
    """A 503 with `Retry-After`, at once, for a prediction or feedback arriving while the
    replica already holds `limit` of them: under more load than it can take, a replica
    answers what it can within its latency and tells the rest when to come back, instead
    of queueing without bound. Health, metrics and admin routes are never shed."""

    def __init__(
        self, app: ASGIApp, limit: int, retry_after_s: int, on_shed: Callable[[str], None]
    ) -> None:
        self.app = app
        self.limit = limit
        self.on_shed = on_shed
        self.in_flight = 0
        self.headers = {"Retry-After": str(retry_after_s)}
        self.detail = (
            f"this replica holds {limit} requests already (DRIFTLOOP_SERVE_MAX_QUEUED_REQUESTS); "
            f"retry after {retry_after_s} s"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.endswith(":predict") or path.endswith("/v1/feedback")):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.on_shed("queue_full")
            answer = JSONResponse({"detail": self.detail}, status_code=503, headers=self.headers)
            await answer(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@dataclasses.dataclass
class PendingSwap:
    version: str
    seen_at: float


@dataclasses.dataclass
class FailedLoad:
    """A version that could not be loaded: why, how often, and when to try again."""

    version: str
    reason: str
    attempts: int
    retry_at: float  # time.monotonic()

    def public(self, alias: str) -> LoadFailure:
        return LoadFailure(
            alias=alias,
            version=self.version,
            reason=self.reason,
            attempts=self.attempts,
            retry_in_s=round(max(self.retry_at - time.monotonic(), 0.0), 1),
        )


@serve.deployment(name="driftloop")
@serve.ingress()
class ModelServer:
    """Serves `@champion`, sends a share to `@challenger`, swaps both when aliases move."""

    async def __init__(self, args: ServeArgs, events: DeploymentHandle | None = None) -> None:
        self.settings = args.settings()
        configure_tracking(self.settings)
        writer = f"{_replica_id()}-{uuid.uuid4().hex[:6]}"
        self.registry = Registry(self.settings.mlflow_tracking_uri, self.settings.model_name)
        self.store = ModelStore(self.registry, self.settings.serving_dir, writer)
        self.metrics = ServingMetrics()
        self.keys = KeyRing.of(self.settings)
        self.request_ids = RequestIds.of(self.settings)
        self.audit = AuditLog(AuditTrail(self.settings.audit_log))
        self.max_queued_requests = (
            args.max_queued_requests or self.settings.serve_max_queued_requests
        )
        self.routing = args.routing(self.settings)
        self.deployed_split = TrafficSplit.of(self.routing)  # announced by `_join_split`
        self.split_joined = False
        self.poll_interval_s = args.poll_interval_s or self.settings.serve_poll_interval_s
        self.events = events  # `RegistryEvents`: wakes the sync loop before the poll is due
        self.webhook_secret = webhook_secret(self.settings)
        self.rng = random.Random()
        self.pending: dict[str, PendingSwap] = {}
        self.refused: set[tuple[str, str]] = set()
        self.failed: dict[str, FailedLoad] = {}  # by alias: its version's last failed load
        self.last_swap_ms: float | None = None
        self.sync_lock = asyncio.Lock()
        self.shadow_tasks: set[asyncio.Task[None]] = set()

        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        try:  # finish an alias move a crashed writer left half done
            await asyncio.to_thread(self.registry.repair)
        except Exception as error:  # registry down: serve what the cache has
            logger.warning("could not check for an unfinished alias move: %s", error)
        await self._start_models()
        assert self.champion is not None
        self.features = self.champion.features
        self.prediction_cache = PredictionCache(
            self.features, *args.prediction_cache(self.settings)
        )
        self.metrics.cache_entries.set_function(self.prediction_cache.__len__)
        self.request_models = build_request_models(
            self.features,
            self.settings.serve_max_instances,
            regression=self.champion.task == "regression",
        )
        window = self.settings.prediction_log_window_s
        capacity = self.settings.prediction_log_capacity
        flush = self.settings.prediction_log_flush_s
        self.prediction_log = ParquetLog(
            self.settings.prediction_log,
            prediction_schema(self.features),
            writer,
            window,
            capacity,
            self.metrics.log_dropped.labels(PREDICTIONS).inc,
            flush,
        )
        self.feedback_log = ParquetLog(
            self.settings.feedback_log,
            FEEDBACK_SCHEMA,
            writer,
            window,
            capacity,
            self.metrics.log_dropped.labels(FEEDBACK).inc,
            flush,
        )
        self._apply_routing(self.routing)
        self.watcher = asyncio.create_task(self._watch())
        # Everything loaded so far (Ray, MLflow, FastAPI, the models) lives as long as the
        # replica; out of the collector's sight, a full collection no longer stalls requests
        # for ~300 ms (measured under load).
        gc.collect()  # start-up's own garbage first: frozen objects are never collected
        gc.freeze()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A `user_config` (a serve deploy, or this replica starting): batching applies as
        given, the traffic split is the one every replica shares (`SharedSplit`)."""
        routing = RoutingConfig.model_validate(user_config)
        self.deployed_split = TrafficSplit.of(routing)
        self.split_joined = False
        self._apply_routing(routing)
        await self._join_split()

    async def _join_split(self, record: ModelRecord | None = None) -> None:
        """Agree with the other replicas: announce a new deploy's split once the registry
        answers (until then this replica follows its user_config), then follow the record."""
        try:
            shared = (
                self._shared_split(record)
                if record is not None
                else await asyncio.to_thread(self._shared_split)
            )
            if not self.split_joined:
                deployed = self.deployed_split
                agreed = (
                    shared.on_deploy(deployed)
                    if shared
                    else SharedSplit(current=deployed, deployed=deployed)
                )
                if agreed != shared:
                    await asyncio.to_thread(self._store_split, agreed)
                shared, self.split_joined = agreed, True
        except Exception as error:  # registry down: keep the split in force
            logger.warning("shared traffic split unavailable: %s", error)
            return
        if shared is not None and shared.current != TrafficSplit.of(self.routing):
            self._apply_routing(self.routing.model_copy(update=shared.current.model_dump()))

    def share_split(self, split: TrafficSplit) -> None:
        """Make `split` the one every replica applies (an admin change, not a deploy)."""
        shared = self._shared_split()
        self._store_split(SharedSplit(current=split, deployed=shared.deployed if shared else split))

    def _shared_split(self, record: ModelRecord | None = None) -> SharedSplit | None:
        raw = (record or self.registry.record()).tags.get(SPLIT_TAG)
        return SharedSplit.model_validate_json(raw) if raw else None

    def _store_split(self, split: SharedSplit) -> None:
        self.registry.set_model_tag(SPLIT_TAG, split.model_dump_json())

    def __del__(self) -> None:
        if hasattr(self, "watcher"):
            self.watcher.cancel()
        for log in (getattr(self, "prediction_log", None), getattr(self, "feedback_log", None)):
            if log is not None:
                log.close()

    # --- model lifecycle -----------------------------------------------------------------

    async def _start_models(self) -> None:
        """Champion from the registry, else the last good copy on disk; never neither."""
        for alias in (CHAMPION, CHALLENGER):
            observed_at = time.time()
            try:
                info = await asyncio.to_thread(self.registry.by_alias, alias)
            except Exception as error:  # unreachable registry: any client error
                self._alert("registry_unreachable", f"@{alias}: {error}")
                model = await self._cached(alias)
            else:
                model = None
                if info is not None:
                    model = await self._load(alias, info, observed_at)
                if model is None and (info is not None or alias == CHAMPION):
                    model = await self._cached(alias)
            if model is not None and not self._same_task(alias, model):
                model = None
            setattr(self, alias, model)
        if self.champion is None:
            raise RuntimeError(
                f"model {self.settings.model_name!r} has no @champion in the registry or in "
                f"{self.settings.serving_dir}; train one first"
            )

    async def _cached(self, alias: str) -> LoadedModel | None:
        """The last good copy of `alias` from disk; None (and an alert) if it cannot be."""
        try:
            return await asyncio.to_thread(self.store.load_cached, alias)
        except Exception as error:  # altered, or unreadable: never served
            self._alert("model_refused", f"@{alias}: the cached copy is not used: {error}")
            return None

    async def _load(self, alias: str, info: Any, observed_at: float) -> LoadedModel | None:
        """Load a version for `alias`, reusing the other slot's copy; None if refused or if
        loading failed (tried again with backoff: `FailedLoad`)."""
        for loaded in (self.champion, self.challenger):
            if loaded is not None and (loaded.version, loaded.sha256) == (
                info.version,
                info.sha256,
            ):
                model = dataclasses.replace(loaded, alias=alias)
                await asyncio.to_thread(self.store.remember, alias, model, observed_at)
                return model
        try:
            model = await asyncio.to_thread(self.store.load, alias, info, observed_at)
        except PERMANENT as error:
            self.refused.add((alias, info.version))
            self.metrics.swaps.labels(alias, "refused").inc()
            self._alert("model_refused", f"@{alias} v{info.version}: {error}")
            return None
        except Exception as error:  # the store, the network, a deleted artifact: any of them
            self._failed_load(alias, info.version, error)
            return None
        self.failed.pop(alias, None)
        features = getattr(self, "features", model.features)
        if model.features != features:
            self.refused.add((alias, info.version))
            self._alert("signature_changed", f"@{alias} v{info.version}: redeploy to serve it")
            return None
        if not self._same_task(alias, model):
            return None
        return model

    def _failed_load(self, alias: str, version: str, error: Exception) -> None:
        """Record a failed load and when to try again; alert once per version, count every
        attempt. What is loaded keeps serving meanwhile."""
        previous = self.failed.get(alias)
        attempts = previous.attempts + 1 if previous and previous.version == version else 1
        delay = min(LOAD_RETRY_S * 2 ** (attempts - 1), LOAD_RETRY_MAX_S)
        delay *= random.uniform(0.8, 1.2)  # replicas sharing a store do not retry in step
        reason = f"{type(error).__name__}: {error}"
        self.failed[alias] = FailedLoad(version, reason, attempts, time.monotonic() + delay)
        self.metrics.swaps.labels(alias, "failed").inc()
        serving, champion = getattr(self, alias), self.champion
        if serving is not None:
            keeps = f"v{serving.version} keeps serving @{alias}"
        elif champion is not None:
            keeps = f"@champion v{champion.version} answers meanwhile"
        else:
            keeps = "nothing is loaded for it"
        message = (
            f"@{alias} v{version} could not be loaded ({reason}); retry in {delay:.0f} s, {keeps}"
        )
        if attempts == 1:
            self._alert("model_refused", message)
        else:
            logger.warning("serving: %s (attempt %d)", _redacted(message), attempts)

    def _same_task(self, alias: str, model: LoadedModel) -> bool:
        """Whether `model` does the task of the champion being served (or is the first
        champion); if not, it is refused, alerted once, and the champion keeps serving."""
        champion = self.champion
        if champion is None or model.task == champion.task:
            return True
        if (alias, model.version) in self.refused:  # its cached copy, after the download
            return False
        self.refused.add((alias, model.version))
        self.metrics.swaps.labels(alias, "refused").inc()
        self._alert(
            "model_refused",
            f"@{alias} v{model.version} is a {model.task} model but @champion "
            f"v{champion.version} is a {champion.task} model: a deployment serves one task "
            "(the challenger must be the champion's task; redeploy to change the task)",
        )
        return False

    async def _watch(self) -> None:
        seen = 0
        while True:
            seen = await self._next_look(seen)
            try:
                await self.sync()
            except Exception:  # the watcher must outlive any single failure
                logger.exception("registry sync failed")

    async def _next_look(self, seen: int) -> int:
        """Wait for a registry event or the poll interval, whichever comes first; returns
        the wake-ups counted so far (`RegistryEvents`)."""
        if self.events is not None:
            try:
                return await self.events.wait.remote(seen, self.poll_interval_s)
            except Exception as error:  # its replica restarting: poll meanwhile
                logger.warning("registry events unavailable, polling: %s", error)
        await asyncio.sleep(self.poll_interval_s)
        return seen

    async def wake(self) -> None:
        """A registry event: every replica syncs now, this one through the same wake-up."""
        if self.events is not None:
            try:
                await self.events.wake.remote()
                return
            except Exception as error:
                logger.warning("could not wake the other replicas: %s", error)
        await self.sync()

    async def sync(self) -> None:
        """Bring both slots in line with the registry's aliases; old models serve meanwhile."""
        async with self.sync_lock:
            observed_at = time.time()
            try:  # one query per poll: its Python work holds the GIL the requests need
                record = await asyncio.to_thread(self.registry.record)
            except Exception as error:  # unreachable registry: keep serving what we have
                logger.warning("registry unreachable, serving loaded models: %s", error)
                return
            for alias in (CHAMPION, CHALLENGER):
                version = record.aliases.get(alias)
                current: LoadedModel | None = getattr(self, alias)
                failed = self.failed.get(alias)
                if version is None:
                    self.failed.pop(alias, None)
                    if alias == CHALLENGER and current is not None:
                        self.challenger = None
                        self.prediction_cache.clear()
                        await asyncio.to_thread(self.store.forget, CHALLENGER, observed_at)
                    continue
                if current is not None and current.version == version:
                    self.failed.pop(alias, None)  # e.g. first served from the cache
                    continue
                if (alias, version) in self.refused or (
                    failed is not None
                    and failed.version == version
                    and time.monotonic() < failed.retry_at
                ):
                    continue
                seen_at = time.perf_counter()
                try:
                    info = await asyncio.to_thread(self.registry.version, version)
                except Exception as error:
                    logger.warning("could not read v%s for @%s: %s", version, alias, error)
                    continue
                model = await self._load(alias, info, observed_at)
                if model is None:
                    continue
                setattr(self, alias, model)  # the swap: requests routed after this use it
                self.prediction_cache.clear()
                self.pending[alias] = PendingSwap(model.version, seen_at)
                self.metrics.swaps.labels(alias, "loaded").inc()
                logger.info("@%s now serves v%s", alias, model.version)
            # Another replica may have taken an admin change. A replica still joining decides
            # on a fresh read: loading models above may have taken seconds.
            await self._join_split(record if self.split_joined else None)

    def _alert(self, kind: str, message: str) -> None:
        """An event a person must see: counted, logged, and appended to events.jsonl."""
        message = _redacted(message)
        self.metrics.alerts.labels(kind).inc()
        logger.error("serving alert %s: %s", kind, message)
        event = {"at": datetime.now(UTC).isoformat(), "kind": kind, "message": message}
        try:
            self.settings.serving_dir.mkdir(parents=True, exist_ok=True)
            with open(self.settings.serving_dir / "events.jsonl", "a") as out:
                out.write(json.dumps(event) + "\n")
        except OSError:
            logger.exception("could not record the alert")

    def _apply_routing(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.metrics.canary_weight.set(routing.canary_weight)
        self.metrics.shadow.set(1 if routing.shadow else 0)
        self._infer.set_max_batch_size(routing.max_batch_rows)
        self._infer.set_batch_wait_timeout_s(routing.batch_wait_timeout_s)

    # --- the hot path --------------------------------------------------------------------

    @serve.batch(
        max_batch_size=256,
        batch_wait_timeout_s=0.0,
        batch_size_fn=lambda b: sum(len(rows) for _, rows in b),
    )
    async def _infer(
        self, items: list[tuple[LoadedModel, list[dict[str, Any]]]]
    ) -> list[tuple[list[Any], np.ndarray | None]]:
        """One model call per model for everything queued since the last call.

        No wait when idle (timeout 0): batches form from requests that arrived while the
        previous call ran, so a lone request pays nothing and a busy replica batches. A
        compiled call runs on the event loop: it takes ~1-4 ms, and handing it to a thread
        cost more (a GIL handover per batch; 7.4 ms against 4.6 ms per lone request). The
        pandas path (~10 ms) goes to a thread so that it does not hold the loop.
        """
        if any(model.compiled is None for model, _ in items):
            return await asyncio.to_thread(self._infer_now, items)  # pandas path: ~10 ms
        return self._infer_now(items)

    def _infer_now(
        self, items: list[tuple[LoadedModel, list[dict[str, Any]]]]
    ) -> list[tuple[list[Any], np.ndarray | None]]:
        """Per item its predictions and probabilities (None for a regressor)."""
        results: list[tuple[list[Any], np.ndarray | None] | None] = [None] * len(items)
        by_model: dict[int, list[int]] = {}
        for position, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(position)
        for positions in by_model.values():
            model = items[positions[0]][0]
            rows = [row for p in positions for row in items[p][1]]
            self.metrics.batch_rows.observe(len(rows))
            labels, probabilities = model.predict_rows(rows)
            start = 0
            for p in positions:
                end = start + len(items[p][1])
                share = None if probabilities is None else probabilities[start:end]
                results[p] = (labels[start:end], share)
                start = end
        return results  # type: ignore[return-value]

    async def predict(self, instances: list[BaseModel]) -> Response:
        started = time.perf_counter()
        key = next((i.key for i in instances if i.key is not None), None)  # type: ignore[attr-defined]
        champion, challenger = self.champion, self.challenger
        assert champion is not None
        route = choose_route(key, self.routing, challenger is not None, self.rng)
        model = challenger if route == CHALLENGER_ROUTE and challenger is not None else champion
        rows = [i.__dict__ for i in instances]  # features, `id` (already a str) and `key`
        labels, listed, unseen = await self._answer(model, rows)
        request_id = self.request_ids.issue()
        if listed is None and not all(map(math.isfinite, labels)):
            return self._no_finite_prediction(model, labels)
        body = {"predictions": labels, "probabilities": listed, "ids": [r["id"] for r in rows]}
        if listed is None:  # a regressor: one float per instance, no probabilities
            del body["probabilities"]
        # The version's own fields were encoded at load; the request id is hex. orjson: 0.5
        # µs for a single-instance body against 17 for `json.dumps` (measured on this machine).
        fields = f', {model.answer_fields}, "request_id": "{request_id}"}}'
        response = Response(
            orjson.dumps(body)[:-1] + fields.encode(),
            media_type="application/json",
            # X-Replica: the writer id its prediction log files carry (Serve's replica id
            # first), so a caller or a test can tell which replica, on which node, answered.
            headers={"X-Model-Version": model.version, "X-Replica": self.store.writer_id},
        )
        elapsed = time.perf_counter() - started
        self._observe(model, route, elapsed)
        if any(unseen):  # answered all the same; counted where a person can see it
            for flagged in filter(None, unseen):
                for feature in flagged.split(","):
                    self.metrics.unseen.labels(feature).inc()
        self._log(request_id, model, route, key, rows, labels, listed, unseen, elapsed)
        if self.routing.shadow and challenger is not None and route != CHALLENGER_ROUTE:
            task = asyncio.create_task(self._shadow(challenger, request_id, key, rows))
            self.shadow_tasks.add(task)  # a task nobody references can vanish mid-flight
            task.add_done_callback(self.shadow_tasks.discard)
        return response

    async def _answer(
        self, model: LoadedModel, rows: list[dict[str, Any]]
    ) -> tuple[list[Any], list[list[float]] | None, list[str | None]]:
        """`model`'s predictions, probabilities (None for a regressor) and unseen flags for
        `rows`; with the prediction cache on, the model answers only the instances it holds
        no answer for. Cached or not, an answer is logged (and mirrored) as any other."""
        cache = self.prediction_cache
        if not cache.enabled:
            labels, probabilities = await self._infer((model, rows))
            listed = None if probabilities is None else probabilities.tolist()
            return labels, listed, model.unseen(rows)
        found = cache.lookup(model.version, rows)
        self.metrics.cache_hits.inc(len(rows) - len(found.missing))
        if found.missing:
            self.metrics.cache_misses.inc(len(found.missing))
            asked = [rows[i] for i in found.missing]
            labels, probabilities = await self._infer((model, asked))
            listed = None if probabilities is None else probabilities.tolist()
            cache.fill(found, labels, listed, model.unseen(asked))
        return found.columns()

    def _no_finite_prediction(self, model: LoadedModel, values: list[float]) -> Response:
        """A 422 for instances a regressor cannot answer: a feature far beyond anything in
        training overflows a linear model to ±inf or NaN, which JSON cannot carry."""
        self.metrics.requests.labels("none", "refused", "422").inc()
        bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
        detail = (
            f"v{model.version} gives no finite prediction for instances {bad}: a feature is "
            "far outside the range the model was trained on"
        )
        return JSONResponse({"detail": detail}, status_code=422)

    async def _shadow(
        self, challenger: LoadedModel, request_id: str, key: str | None, rows: list[dict]
    ) -> None:
        """The challenger's answer to the same request, logged only."""
        started = time.perf_counter()
        try:
            labels, listed, unseen = await self._answer(challenger, rows)
        except Exception:  # a failing challenger must never affect the champion's answers
            logger.exception("shadow prediction failed")
            return
        elapsed = time.perf_counter() - started
        self._observe(challenger, SHADOW_ROUTE, elapsed)
        self._log(request_id, challenger, SHADOW_ROUTE, key, rows, labels, listed, unseen, elapsed)

    def _observe(self, model: LoadedModel, route: Route, elapsed: float) -> None:
        self.metrics.requests.labels(model.version, route, "200").inc()
        self.metrics.latency.labels(model.version, route, "200").observe(elapsed)
        pending = self.pending.get(model.alias)
        if pending is not None and pending.version == model.version:
            del self.pending[model.alias]
            self.last_swap_ms = (time.perf_counter() - pending.seen_at) * 1000
            self.metrics.swap_seconds.set(self.last_swap_ms / 1000)

    def _log(
        self,
        request_id: str,
        model: LoadedModel,
        route: Route,
        key: str | None,
        rows: list[dict[str, Any]],
        labels: list[Any],
        probabilities: list[list[float]] | None,
        unseen: list[str | None],
        elapsed: float,
    ) -> None:
        """One record per instance. A label is logged as `str`; a regressor's float as its
        `repr` (the shortest string that reads back as the same float) with no probability."""
        at = datetime.now(UTC)
        common = {
            "request_id": request_id,
            "at": at,
            "model_version": model.version,
            "route": route,
            "key": key,
            "latency_ms": elapsed * 1000,
        }
        if probabilities is None:
            self.prediction_log.append(
                [
                    {
                        **common,
                        **row,
                        "index": i,
                        "prediction": repr(value),
                        "probability": None,
                        "probabilities": None,
                        "unseen": u,
                    }
                    for i, (row, value, u) in enumerate(zip(rows, labels, unseen, strict=True))
                ]
            )
            return
        self.prediction_log.append(
            [
                {
                    **common,
                    **row,
                    "index": i,
                    "prediction": str(label),
                    "probability": max(p),
                    "probabilities": p,
                    "unseen": u,
                }
                for i, (row, label, p, u) in enumerate(
                    zip(rows, labels, probabilities, unseen, strict=True)
                )
            ]
        )

    def feedback(self, items: list[FeedbackItem]) -> FeedbackResponse:
        """Labels as strings; a regressor's observed value is already a float (validated
        as `RegressionFeedbackItem`), so its `str` is its `repr` and reads back exactly."""
        at = datetime.now(UTC)
        self.feedback_log.append(
            [
                {"request_id": i.request_id, "id": i.id, "at": at, "label": str(i.label)}
                for i in items
            ]
        )
        return FeedbackResponse(accepted=len(items))

    def readiness(self) -> Readiness:
        return Readiness(
            ready=self.champion is not None,
            detail="serving" if self.champion is not None else "no champion loaded",
            champion=_state(self.champion),
            challenger=_state(self.challenger),
            canary_weight=self.routing.canary_weight,
            shadow=self.routing.shadow,
            last_swap_ms=self.last_swap_ms,
        )

    def state(self) -> AdminState:
        """What an operator needs to see of this replica, secrets left out."""
        return AdminState(
            **self.readiness().model_dump(),
            replica=self.store.writer_id,
            refused=[{"alias": a, "version": v} for a, v in sorted(self.refused)],
            load_failures=[f.public(alias) for alias, f in sorted(self.failed.items())],
            key_ids=self.keys.key_ids(),
            request_id_secret=self.request_ids.source,
            max_queued_requests=self.max_queued_requests,
        )

    # --- HTTP ----------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The FastAPI app, typed by the champion's signature (known only once loaded)."""
        return build_api(self)


def build_api(server: ModelServer) -> FastAPI:
    """Routes over one `ModelServer`; every body is a pydantic model, every error a 4xx."""
    api = FastAPI(
        title="driftloop serving",
        description="KServe V1 predictions from the MLflow registry's @champion.",
        version="1",
    )
    predict_model = server.request_models.predict
    max_instances = server.settings.serve_max_instances
    feedback_model = server.request_models.feedback
    name = server.settings.model_name
    keys, ids, audit = server.keys, server.request_ids, server.audit
    api_key = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="An admin key (routing, rollback, reload), a viewer key (read-only) or, "
        "for /v1/feedback when one is set, the feedback key.",
    )

    def refused(status: int) -> None:
        """Count answers that are not predictions, for the error-rate alert."""
        server.metrics.requests.labels("none", "refused", str(status)).inc()

    def shed(reason: str) -> None:
        server.metrics.shed.labels(reason).inc()
        refused(503)

    api.add_middleware(
        BodyLimit, max_bytes=server.settings.serve_max_body_bytes, on_refused=lambda: refused(413)
    )
    # Well-formed predictions skip FastAPI's per-request work; the rest, every 4xx included,
    # reaches the routes below unchanged (`serving/fast_ingress.py`).
    api.add_middleware(
        FastPredict,
        routes=api.router.routes,
        path=PREDICT_PATH,
        body=predict_model,
        model_name=name,
        max_bytes=server.settings.serve_max_body_bytes,
        predict=server.predict,
        on_path=lambda fast: server.metrics.ingress[fast].inc(),
    )
    # Outermost: a full replica answers before reading a byte of the body.
    api.add_middleware(
        LoadShed,
        limit=server.max_queued_requests,
        retry_after_s=server.settings.serve_retry_after_s,
        on_shed=shed,
    )

    @api.exception_handler(Exception)
    async def _crashed(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        refused(500)
        return JSONResponse({"detail": "internal error; see the replica log"}, status_code=500)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        problems = error.errors()
        # A batch over the maximum is a size problem (413), not a malformed request (422).
        for problem in problems:
            if problem.get("type") == "too_long" and tuple(problem.get("loc", ())) in {
                ("body", "instances"),
                ("body", "items"),
            }:
                what = "instances" if problem["loc"][1] == "instances" else "feedback items"
                refused(413)
                return JSONResponse(
                    {"detail": f"at most {max_instances} {what} per request"}, status_code=413
                )
        # Without the offending input: it may be NaN (not JSON) or large, and is the caller's.
        detail = [{k: p[k] for k in ("type", "loc", "msg") if k in p} for p in problems]
        refused(422)
        return JSONResponse({"detail": detail}, status_code=422)

    def client_of(request: Request) -> tuple[str | None, str | None]:
        return (request.client.host if request.client else None), request.headers.get(
            "x-forwarded-for"
        )

    def caller(role: Role, off: str) -> Callable[..., Any]:
        """A dependency admitting keys that may act as `role`; every refusal is audited."""

        async def check(request: Request, presented: str | None = Security(api_key)) -> Caller:
            if not keys.configured(role):
                raise HTTPException(403, off)
            action = f"{request.method} {request.url.path}"
            host, forwarded = client_of(request)
            if not presented or not presented.strip():
                audit.record(
                    action=action, outcome="401", caller=None, client=host, forwarded_for=forwarded
                )
                raise HTTPException(401, "missing or empty X-API-Key header")
            found = keys.identify(presented)
            if found is None or role not in GRANTS[found.role]:
                audit.record(
                    action=action,
                    outcome="403",
                    caller=found,
                    client=host,
                    forwarded_for=forwarded,
                    presented_key_id=key_id(presented.strip()),
                )
                raise HTTPException(403, "wrong API key" if found is None else "not allowed")
            return found

        return check

    admin_caller = caller(
        ADMIN_ROLE, "admin endpoints are off: DRIFTLOOP_ADMIN_API_KEY is unset or empty"
    )
    viewer_caller = caller(
        VIEWER_ROLE,
        "the admin state is off: neither DRIFTLOOP_ADMIN_API_KEY nor DRIFTLOOP_VIEWER_API_KEY "
        "is set",
    )
    feedback_caller = caller(FEEDBACK_ROLE, "feedback needs no key here")
    Admin = Annotated[Caller, Depends(admin_caller)]

    def audited(request: Request, who: Caller, before: Any, after: Any, outcome: str) -> None:
        host, forwarded = client_of(request)
        audit.record(
            action=f"{request.method} {request.url.path}",
            outcome=outcome,
            caller=who,
            client=host,
            forwarded_for=forwarded,
            before=before,
            after=after,
        )

    def failed(request: Request, who: Caller, before: Any, what: str, error: Exception) -> NoReturn:
        """A generic answer for the client; the details in the replica log under an id."""
        reference = uuid.uuid4().hex[:8]
        details = _redacted(f"{type(error).__name__}: {error}")
        logger.error("admin %s failed (error %s): %s", request.url.path, reference, details)
        audited(request, who, before, None, f"503 error {reference}")
        raise HTTPException(503, f"{what}; see the replica log (error {reference})")

    @api.post(
        PREDICT_PATH,
        response_model=server.request_models.response,
        responses={
            404: {"description": "unknown model"},
            413: {"description": "too many"},
            503: {"description": "replica full: retry after the Retry-After header's seconds"},
        },
    )
    async def predict(model: str, body: predict_model) -> Response:  # type: ignore[valid-type]
        if model != name:
            refused(404)
            raise HTTPException(404, f"no model named {model!r}; this server serves {name!r}")
        return await server.predict(body.instances)  # type: ignore[attr-defined]

    # Without a feedback key of its own, feedback is open (its ids are signed all the same).
    feedback_guard = [Depends(feedback_caller)] if keys.has_own(FEEDBACK_ROLE) else []

    @api.post(
        "/v1/feedback",
        dependencies=feedback_guard,
        responses={
            413: {"description": "too many or too large"},
            422: {"description": "invalid, or a request_id this deployment did not issue"},
        },
    )
    def feedback(body: feedback_model) -> Response:  # type: ignore[valid-type]
        items = body if isinstance(body, list) else [body]
        where = (
            (lambda i: ["body", i, "request_id"])
            if isinstance(body, list)
            else (lambda i: ["body", "request_id"])
        )
        unknown = [
            {
                "type": "request_id_not_issued",
                "loc": where(i),
                "msg": "not a request_id this deployment issued: use the request_id of an "
                "answer (ids are signed), or the instance's id",
            }
            for i, item in enumerate(items)
            if item.request_id is not None and not ids.verify(item.request_id)
        ]
        if unknown:  # nothing of the request is applied
            refused(422)
            return JSONResponse({"detail": unknown}, status_code=422)
        return JSONResponse(server.feedback(items).model_dump())

    @api.post(
        REGISTRY_EVENTS,
        responses={
            401: {"description": "unsigned"},
            403: {"description": "forged, stale, or registry events are off"},
        },
    )
    async def registry_event(request: Request) -> EventAnswer:
        """An MLflow registry webhook delivery: an alias of this model moved, sync now."""
        secret = server.webhook_secret
        if secret is None:
            refused(403)
            raise HTTPException(
                403, "registry events are off: DRIFTLOOP_REGISTRY_WEBHOOK_SECRET is unset"
            )
        try:
            event = verify(secret, request.headers, await request.body(), time.time())
        except Refused as error:
            refused(error.status)
            host, forwarded = client_of(request)
            audit.record(
                action=f"POST {REGISTRY_EVENTS}",
                outcome=str(error.status),
                caller=None,
                client=host,
                forwarded_for=forwarded,
            )
            raise HTTPException(error.status, error.message) from None
        woken, detail = describe(event, name)
        if woken:
            await server.wake()
        return EventAnswer(woken=woken, detail=detail)

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @api.get(
        "/readyz",
        response_model=Readiness,
        responses={
            200: {
                "description": "Details (models, routing) need a viewer or admin key "
                "when one is configured; without it only `ready` and `detail`."
            },
            503: {"model": Health},
        },
    )
    def readyz(presented: str | None = Security(api_key)) -> Response:
        state = server.readiness()
        status = 200 if state.ready else 503
        open_to_all = not keys.configured(VIEWER_ROLE)  # no key exists that could be asked for
        found = keys.identify(presented) if presented and presented.strip() else None
        if open_to_all or (found is not None and VIEWER_ROLE in GRANTS[found.role]):
            return JSONResponse(state.model_dump(), status_code=status)
        return JSONResponse(Health(ready=state.ready, detail=state.detail).model_dump(), status)

    @api.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/admin/state", response_model=AdminState)
    def admin_state(who: Annotated[Caller, Depends(viewer_caller)]) -> AdminState:
        return server.state()

    @api.post("/admin/routing")
    async def set_routing(request: Request, update: RoutingUpdate, who: Admin) -> Readiness:
        """Change the split for every replica: through the registry, which all of them poll."""
        before = TrafficSplit.of(server.routing).model_dump()
        routing = server.routing.model_copy(update=update.model_dump(exclude_none=True))
        try:
            await asyncio.to_thread(server.share_split, TrafficSplit.of(routing))
        except Exception as error:  # registry down: say so instead of splitting replicas
            failed(request, who, before, "registry unreachable, routing unchanged", error)
        server._apply_routing(routing)
        audited(request, who, before, TrafficSplit.of(routing).model_dump(), "200")
        return server.readiness()

    @api.post("/admin/reload")
    async def reload(request: Request, who: Admin) -> Readiness:
        before = _versions(server)
        server.refused.clear()  # a person asked: try refused versions again
        server.failed.clear()  # and failed ones now, not after their backoff
        await server.sync()
        audited(request, who, before, _versions(server), "200")
        return server.readiness()

    @api.post("/admin/rollback")
    async def rollback(
        request: Request, who: Admin, body: RollbackRequest | None = None
    ) -> Readiness:
        """`@champion` back to `@previous`; with `expected_champion`, a retry is a no-op."""
        expected = body.expected_champion if body else None
        before = _versions(server)
        try:
            moved = await asyncio.to_thread(server.registry.rollback, expected)
        except RegistryError as error:  # also AliasConflict: our own sentence, no secret
            audited(request, who, before, None, "409")
            raise HTTPException(409, str(error)) from error
        except Exception as error:  # registry down: a 503, the details in the log
            failed(request, who, before, "registry unreachable, nothing rolled back", error)
        if moved.changed:
            server._alert(
                "rollback",
                f"@champion moved back from v{moved.before[CHAMPION]} to "
                f"v{moved.after[CHAMPION]} by the admin API (key {who.key_id})",
            )
        await server.sync()
        audited(request, who, moved.before, moved.after, "200")
        return server.readiness()

    return api


def _versions(server: ModelServer) -> dict[str, str | None]:
    return {
        alias: (model.version if model else None)
        for alias, model in ((CHAMPION, server.champion), (CHALLENGER, server.challenger))
    }


def _redacted(message: str) -> str:
    """`message` without a URL's credentials (MLflow and botocore errors quote URLs)."""
    return CREDENTIALS_IN_URL.sub(r"\1***@", message)


def _state(model: LoadedModel | None) -> ModelState | None:
    if model is None:
        return None
    return ModelState(
        alias=model.alias,
        version=model.version,
        sha256=model.sha256,
        source=model.source,
        task=model.task,
        semver=model.semver,
    )


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit use): any stable-enough name will do
        return "local"


def build_app(args: ServeArgs) -> Application:
    """The application for `serve.run` or `serve deploy` (import path `serving.app:build_app`).

    Keys and the request-id secret are checked here too, so a weak one stops the deploy with
    one sentence instead of crash-looping replicas. `LoadShed` bounds what a replica holds
    (`DRIFTLOOP_SERVE_MAX_QUEUED_REQUESTS`); behind it Ray's own `max_queued_requests`
    bounds the requests waiting for one of the replica's `max_ongoing_requests` slots, as
    many again, with the same 503 and Retry-After (a backstop for a stalled event loop, not
    counted in our metrics: those never reach the application). Ray counts a request as
    queued while it is being admitted, so the same bound for both would have Ray shed
    bursts our own count admits (measured: 223 answers 503 to 256 requests, some by Ray).
    """
    settings = args.settings()
    KeyRing.of(settings)
    if settings.request_id_secret is not None:
        RequestIds.of(settings)
    # Without a webhook secret nothing can wake the replicas: no events deployment (a Serve
    # replica process of its own), and the replicas poll as they always did.
    secret = webhook_secret(settings)
    if secret is not None:
        _register_webhook(settings, secret)
    return ModelServer.options(
        num_replicas=args.num_replicas or settings.serve_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_ongoing_requests,
        backpressure_config=BackpressureConfig(
            status_code=503, retry_after_s=settings.serve_retry_after_s
        ),
        user_config=args.routing(settings).model_dump(),
        # Serve's access log buffers a record per request and flushes 1,000 at a time in the
        # event loop: ~10 ms stalls that made the idle p99 ~19 ms for a trivial route (on a
        # cluster too). Every request is counted in our metrics and every prediction is in
        # the prediction log.
        logging_config={"enable_access_log": False},
        ray_actor_options={
            "num_cpus": args.replica_cpus,
            "runtime_env": {"env_vars": {**PINNED_THREADS, **MLFLOW_FAST_FAIL, **UNBUFFERED_LOG}},
        },
    ).bind(args, None if secret is None else RegistryEvents.bind())


def _register_webhook(settings: Settings, secret: str) -> None:
    """The alias webhook on the MLflow server, registered here because every way to deploy
    (`driftloop serve` and `up`, `serve deploy`, a RayService) builds the application with
    the settings it serves with: the webhook points where this deployment answers, and a
    rotated secret reaches MLflow with the redeploy. Any failure leaves polling in charge."""
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        logger.warning(
            "DRIFTLOOP_REGISTRY_WEBHOOK_SECRET is set, but registry webhooks need an MLflow "
            "tracking server (DRIFTLOOP_TRACKING_URI=http(s)://…): replicas poll"
        )
        return
    try:
        logger.info(ensure_webhook(settings, secret))
    except Exception as error:  # an old server, SSRF rules, an undecryptable stored secret
        reason = _redacted(f"{type(error).__name__}: {error}").replace(secret, "***")
        logger.warning(
            "registry webhook not registered (%s); replicas poll every %s s",
            reason,
            settings.serve_poll_interval_s,
        )
