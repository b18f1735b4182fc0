"""Registry events: an alias move pushed by MLflow's webhook wakes every replica at once.

Replicas poll the registry every `DRIFTLOOP_SERVE_POLL_INTERVAL_S` (1 s), so a promotion
reaches clients up to a poll later. An MLflow tracking server on a SQL store (3.x,
experimental) POSTs a signed event after each alias write; with
`DRIFTLOOP_REGISTRY_WEBHOOK_SECRET` set, serving registers a webhook for alias events
(`ensure_webhook`, at deploy), checks each delivery's signature and age (`verify`), and
wakes the replicas. One replica receives the HTTP call, so the wake-up goes through
`RegistryEvents`, a deployment of the same application that every replica's sync loop
long-polls with the poll interval as timeout: without deliveries (a server without
webhooks, a lost delivery) each wait times out and the replica polls as before; without
a secret (the embedded SQLite store) there is no such deployment at all. An event
carries nothing the replica trusts but "look now": it syncs from the registry itself, so
a replayed or reordered delivery costs one extra read. Only a new @champion or
@challenger wakes replicas; a removal waits for the poll (`describe`).

The MLflow server must allow the URL: `MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https` for a
plain-http serving URL, `MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true` for a private address;
it caches its webhook list for `MLFLOW_WEBHOOK_CACHE_TTL` (60 s), and without
`MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY` the secrets it stores do not survive its restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field
from ray import serve

from driftloop.registry import CHALLENGER, CHAMPION
from driftloop.settings import MIN_ADMIN_KEY_CHARS, Settings

logger = logging.getLogger("ray.serve")

REGISTRY_EVENTS = "/v1/registry-events"
EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
# MLflow's headers (mlflow/webhooks/constants.py) and signature scheme (delivery.py):
# "v1," + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")).
SIGNATURE = "x-mlflow-signature"
TIMESTAMP = "x-mlflow-timestamp"
DELIVERY = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"
# Older (or later: another clock) deliveries are refused as replays; Standard Webhooks'
# tolerance. MLflow retries a failed delivery for ~15 s, well within it.
MAX_AGE_S = 300
# The aliases a replica serves: a move of another alias (`@previous`, `@candidate`) is
# acknowledged and ignored.
SERVED = (CHAMPION, CHALLENGER)


class Refused(Exception):
    """A delivery serving does not act on: unsigned (401), forged or stale (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AliasEvent:
    """A verified alias event: which model, which alias, what happened to it."""

    model: str
    alias: str
    action: str
    delivery_id: str


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's `X-MLflow-Signature` of a delivery (also what tests and benches send)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> AliasEvent | None:
    """The delivery's alias event once its signature and age check out; None for a signed
    event of another kind. Raises `Refused` (the message never holds a secret or a
    signature)."""
    delivery, stamp, signature = (headers.get(h, "") for h in (DELIVERY, TIMESTAMP, SIGNATURE))
    if not (delivery and stamp and signature):
        raise Refused(
            401,
            f"unsigned registry event: {DELIVERY}, {TIMESTAMP} and {SIGNATURE} are required "
            "(a webhook registered with DRIFTLOOP_REGISTRY_WEBHOOK_SECRET sends them)",
        )
    if not stamp.isdigit():
        raise Refused(403, f"{TIMESTAMP} is not a Unix time in seconds")
    if not hmac.compare_digest(sign(secret, delivery, stamp, body).encode(), signature.encode()):
        raise Refused(403, "the registry event's signature does not match the webhook secret")
    age = now - int(stamp)
    if abs(age) > MAX_AGE_S:
        raise Refused(
            403, f"the registry event is {age:.0f} s old; at most {MAX_AGE_S} s is accepted"
        )
    try:
        event = json.loads(body)
        data = event["data"]
        kind = f"{event['entity']}.{event['action']}"
    except (ValueError, KeyError, TypeError):
        raise Refused(403, "a signed registry event without entity, action and data") from None
    if kind not in EVENTS or not isinstance(data, dict):
        return None
    return AliasEvent(str(data.get("name")), str(data.get("alias")), event["action"], delivery)


def webhook_secret(settings: Settings) -> str | None:
    """`DRIFTLOOP_REGISTRY_WEBHOOK_SECRET`, or the first line of its file; None when unset
    or blank. A short one stops the deploy: it is what a forger would have to guess."""
    secret = settings.registry_webhook_secret
    value = secret.get_secret_value().strip() if secret is not None else ""
    if not value and settings.registry_webhook_secret_file:
        lines = Path(settings.registry_webhook_secret_file).read_text().splitlines()
        value = lines[0].strip() if lines else ""
    if not value:
        return None
    if len(value) < MIN_ADMIN_KEY_CHARS:
        raise ValueError(
            f"the registry webhook secret has {len(value)} characters, fewer than "
            f"{MIN_ADMIN_KEY_CHARS}: generate one with `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`"
        )
    return value


def webhook_url(settings: Settings) -> str:
    """Where the MLflow server delivers: `DRIFTLOOP_REGISTRY_WEBHOOK_URL`, else this
    serving host and port (right when MLflow runs beside serving)."""
    if settings.registry_webhook_url:
        return settings.registry_webhook_url
    scheme = "https" if settings.serve_tls_certfile else "http"
    return f"{scheme}://{settings.serve_host}:{settings.serve_port}{REGISTRY_EVENTS}"


def webhook_name(model_name: str) -> str:
    """One webhook per registered model, found again by this name (MLflow's name rules:
    letters, digits, `._-`, under 63 characters)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in model_name)
    return f"driftloop-{safe}"[:62].rstrip("._-")


def ensure_webhook(settings: Settings, secret: str) -> str:
    """Register (or bring up to date) this model's alias webhook on the MLflow server;
    idempotent by name: one webhook is left, with our URL, events and secret, active.
    Returns what was done, in one sentence for the log."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    name, url = webhook_name(settings.model_name), webhook_url(settings)
    ours, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        ours += [w for w in page if w.name == name]
        token = page.token
        if not token:
            break
    for extra in ours[1:]:  # two deploys registered at once: keep one
        client.delete_webhook(extra.webhook_id)
    description = f"driftloop serving of {settings.model_name!r}: alias moves, pushed"
    if ours:
        # The secret cannot be read back to compare: set it every time (a rotation).
        client.update_webhook(
            ours[0].webhook_id,
            url=url,
            events=list(EVENTS),
            secret=secret,
            status="ACTIVE",
            description=description,
        )
        return f"registry webhook {name!r} updated: alias events go to {url}"
    client.create_webhook(name, url, list(EVENTS), description=description, secret=secret)
    return f"registry webhook {name!r} created: alias events go to {url}"


@serve.deployment(
    name="registry-events",
    num_replicas=1,
    # Every model replica holds one wait at a time, plus the wake-ups.
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
class RegistryEvents:
    """A counter of wake-ups the model replicas long-poll: `wait` returns as soon as it
    differs from what the caller saw (a wake-up is never lost between two waits), or after
    the timeout."""

    def __init__(self) -> None:
        self.generation = 0
        self.changed = asyncio.Event()

    async def wake(self) -> int:
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()
        return self.generation

    async def wait(self, seen: int, timeout_s: float) -> int:
        if self.generation == seen:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return self.generation


def describe(event: AliasEvent | None, model_name: str) -> tuple[bool, str]:
    """Whether a verified delivery should wake the replicas, and the answer's detail."""
    if event is None:
        return False, "not an alias event; ignored"
    if event.model != model_name:
        return False, f"an event of model {event.model!r}; this deployment serves {model_name!r}"
    if event.alias not in SERVED:
        return False, f"@{event.alias} is not served; ignored"
    if event.action == "deleted":
        # A promotion removes @challenger before it moves @champion to that version: a
        # sync in between would drop the loaded challenger and load it again (measured:
        # ~0.5 s). A removal is left to the poll, which is no later than before events.
        return False, f"@{event.alias} deleted: left to the next poll"
    return True, f"@{event.alias} {event.action}: replicas sync now"


class EventAnswer(BaseModel):
    """What serving answers a verified delivery (MLflow only reads the status)."""

    woken: bool = Field(description="Whether the replicas sync now.")
    detail: str
