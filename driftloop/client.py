"""A typed Python client for driftloop serving: a DataFrame in, a DataFrame out.

Built for a data scientist or a service calling a running `driftloop serve` over HTTP(S),
so that none of them re-implements what the raw API leaves to the caller: NaN, numpy
scalars and pandas' "an int column with a gap is float" turned into JSON the strict
request model accepts, batches split to the server's limits, the answer joined back to the
caller's rows, 503s and dropped connections retried, and every refusal raised with the
server's own message and the fields it named.

    with Client("http://127.0.0.1:8000") as client:
        scored = client.predict(frame, ids=frame["loan_id"])
        client.feedback(outcomes, ids=loan_ids)
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd

# Serving's defaults (DRIFTLOOP_SERVE_MAX_INSTANCES, DRIFTLOOP_SERVE_MAX_BODY_BYTES): more in
# one request is a 413, so the client splits before it sends.
DEFAULT_MAX_INSTANCES = 1000
DEFAULT_MAX_BODY_BYTES = 2**20
# Full-jitter exponential backoff: spreads the retries of many clients after one outage.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
# A server asking for a longer pause than this is down for a while: say so rather than
# block the caller for minutes.
MAX_RETRY_AFTER_S = 30.0
# A float with an integer value below this is exactly that integer: sent as one, so that an
# int feature read as float64 (pandas, because of a gap or `to_numpy()`) still validates.
_EXACT_INTEGERS = 2**53
# Fields of a predict answer that are not columns of their own: per-instance lists, and
# `classes` (which names the probability columns); every other field of the answer
# (model_version, model_semver, request_id, and any the server adds) becomes a column.
_PER_INSTANCE = ("predictions", "probabilities", "ids", "classes")

Rows = pd.DataFrame | Sequence[Mapping[str, Any]]
Verify = bool | str | os.PathLike[str] | ssl.SSLContext


class DriftloopError(Exception):
    """Serving refused a call or could not answer it; the message is the server's own."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass(frozen=True)
class FieldError:
    """One problem a 422 named: where (`("instances", 17, "salary")`, the row counted in
    the whole call, not in the chunk sent) and the server's message."""

    location: tuple[str | int, ...]
    message: str
    type: str

    @property
    def field(self) -> str | None:
        """The feature (or feedback field) at fault; None when the item as a whole is."""
        last = _trimmed(self.location)[-1] if self.location else None
        return last if isinstance(last, str) else None


class InvalidRequest(DriftloopError):
    """A 4xx other than 401/403: the request is wrong, so retrying it cannot help."""

    def __init__(self, message: str, status_code: int, errors: tuple[FieldError, ...] = ()) -> None:
        super().__init__(message, status_code)
        self.errors = errors

    @property
    def fields(self) -> list[str]:
        """The fields the server named, each once, in its order."""
        return list(dict.fromkeys(e.field for e in self.errors if e.field is not None))


class Unauthorized(DriftloopError):
    """A 401 (no API key) or 403 (a wrong key, or admin endpoints off on the server)."""


class Unavailable(DriftloopError):
    """Serving could not be reached or stayed unavailable (503) through every retry."""


class Client:
    """One serving endpoint over one connection pool; close it, or use it in `with`.

    `api_key` is sent as `X-API-Key` on every call, to this URL only: the server decides
    what it allows (an admin key everything, a viewer key the details of `status` and
    `admin_state`, a feedback key `/v1/feedback` when one is configured). `verify` is True,
    False, the path of a CA bundle (a private CA in front of serving) or an
    `ssl.SSLContext`. `max_instances` and `max_body_bytes` are serving's defaults: set
    them to the server's own limits where those are lower.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        model: str = "driftloop",
        timeout: float = 30.0,
        retries: int = 3,
        verify: Verify = True,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if retries < 0 or max_instances < 1 or max_body_bytes < 1:
            raise ValueError("retries must be >= 0, max_instances and max_body_bytes >= 1")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("url must start with http:// or https://")
        # What messages and repr show: a password in the URL is a secret too.
        self.url = str(parsed.copy_with(userinfo=b"")).rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.max_instances = max_instances
        self.max_body_bytes = max_body_bytes
        headers = {"Content-Type": "application/json"}
        if api_key is not None and api_key.strip():
            headers["X-API-Key"] = api_key
        if isinstance(verify, str | os.PathLike):
            verify = ssl.create_default_context(cafile=os.fspath(verify))
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, verify=verify
        )

    def __repr__(self) -> str:  # never the key
        return f"Client({self.url!r}, model={self.model!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- data ----------------------------------------------------------------------------

    def predict(
        self,
        rows: Rows,
        ids: Sequence[str | int] | pd.Series | None = None,
        key: str | None = None,
    ) -> pd.DataFrame:
        """One row per instance, on the input's index so it joins back to `rows`.

        Columns: `id`, `prediction`, one `probability_<class>` per class for a classifier
        (none for a regressor), `model_version`, `model_semver` and `request_id`. The last
        three are columns, not `DataFrame.attrs`: a large frame goes out in several requests,
        each with its own request id and possibly its own version (a canary, a swap
        mid-way), and attrs do not survive `concat` or `merge`. The probability columns are
        named by the answer's `classes`; a server too old to send them gets positions
        (`probability_0`, ...).

        `ids` are business ids (echoed, logged, usable in `feedback`); `key` makes canary
        routing sticky for every instance sent. NaN and None become JSON null, which a
        feature with gaps in training takes as missing (any other feature answers 422).
        """
        records, index = _records(rows)
        if not records:
            raise ValueError("no rows to predict")
        id_values = None if ids is None else list(ids)
        if id_values is not None and len(id_values) != len(records):
            raise ValueError(f"{len(id_values)} ids for {len(records)} rows")
        encoded = []
        for position, record in enumerate(records):
            instance = {
                str(name): _json_value(value, f"row {position}, column {name!r}")
                for name, value in record.items()
            }
            if id_values is not None:
                if "id" in instance:
                    raise ValueError("the rows have an 'id' column: pass it or ids, not both")
                instance["id"] = _json_value(id_values[position], f"ids[{position}]")
            if key is not None:
                if "key" in instance:
                    raise ValueError("the rows have a 'key' column: pass it or key, not both")
                instance["key"] = key
            encoded.append(_encode(instance))
        path = f"/v1/models/{quote(self.model, safe='')}:predict"
        parts = []
        for start, body in self._chunks(encoded, b'{"instances":[', b"]}"):
            answer = self._call("POST", path, body, offset=start)
            parts.append(_answer_frame(answer))
        frame = pd.concat(parts, ignore_index=True)
        frame.index = index
        return frame

    def feedback(
        self,
        labels: Sequence[Any] | pd.Series | np.ndarray,
        ids: Sequence[str | int] | pd.Series | None = None,
        request_ids: Sequence[str] | pd.Series | None = None,
    ) -> int:
        """Send true labels (a regressor's observed values); returns how many were accepted.

        Give `ids` (the business ids sent with `predict`) or `request_ids` (from answers of
        one instance each: a request id labels every instance of its request). Sent in
        chunks of `max_instances`; if one is refused, sending the whole call again is safe:
        a second label for a prediction is counted, never applied.
        """
        if (ids is None) == (request_ids is None):
            raise ValueError(
                "give exactly one of ids (the business ids sent with the instances) and "
                "request_ids (from the answers)"
            )
        name = "id" if ids is not None else "request_id"
        references = list(ids if ids is not None else request_ids)  # type: ignore[arg-type]
        values = list(labels)
        if len(references) != len(values):
            raise ValueError(f"{len(values)} labels for {len(references)} {name}s")
        if name == "request_id" and len(set(references)) < len(references):
            raise ValueError(
                "a request_id appears more than once: it labels every instance of its "
                "request, so give one label per request, or send ids with predict and "
                "label instances by ids"
            )
        encoded = []
        for position, (reference, label) in enumerate(zip(references, values, strict=True)):
            item = {
                name: _json_value(reference, f"{name}s[{position}]"),
                "label": _json_value(label, f"labels[{position}]"),
            }
            missing = [k for k, v in item.items() if v is None]
            if missing:
                raise ValueError(f"{missing[0]} {position} is missing; send only known labels")
            encoded.append(_encode(item))
        accepted = 0
        for start, body in self._chunks(encoded, b"[", b"]"):
            accepted += int(self._call("POST", "/v1/feedback", body, offset=start)["accepted"])
        return accepted

    def status(self) -> dict[str, Any]:
        """`/readyz`: `ready` and `detail`, and with a viewer or admin key (or on a server
        with none configured) both models' versions and the routing. Not ready is an
        answer (`ready` false), not an exception."""
        return self._call("GET", "/readyz")

    # --- admin (an admin key; a viewer key for admin_state) --------------------------------

    def set_routing(
        self, canary_weight: float | None = None, shadow: bool | None = None
    ) -> dict[str, Any]:
        """Change the challenger's share and/or shadow mode on every replica; a value left
        None keeps its value. Returns the readiness after the change."""
        body = {"canary_weight": canary_weight, "shadow": shadow}
        return self._call("POST", "/admin/routing", _encode(_present(body)))

    def rollback(self, expected_champion: str | None = None) -> dict[str, Any]:
        """`@champion` back to `@previous`. With `expected_champion` (the version being
        rolled back) a retried or repeated call changes nothing, so it is safe to retry."""
        body = {"expected_champion": None if expected_champion is None else str(expected_champion)}
        return self._call("POST", "/admin/rollback", _encode(_present(body)))

    def reload(self) -> dict[str, Any]:
        """Re-read the registry's aliases now (and retry versions refused before)."""
        return self._call("POST", "/admin/reload")

    def admin_state(self) -> dict[str, Any]:
        """`GET /admin/state` (a viewer or admin key): the replica as an operator sees it,
        its refused and failing versions, key ids (never keys), the queue limit."""
        return self._call("GET", "/admin/state")

    # --- transport -------------------------------------------------------------------------

    def _chunks(self, items: list[bytes], head: bytes, tail: bytes) -> Iterator[tuple[int, bytes]]:
        """Request bodies of consecutive items, each with the position of its first item:
        at most `max_instances` items and `max_body_bytes` bytes a body (a single item over
        the byte limit goes alone: the server's 413 then says so)."""
        chunk: list[bytes] = []
        start, size = 0, len(head) + len(tail)
        for position, item in enumerate(items):
            grown = size + len(item) + (1 if chunk else 0)
            if chunk and (len(chunk) == self.max_instances or grown > self.max_body_bytes):
                yield start, head + b",".join(chunk) + tail
                start, chunk, size = position, [], len(head) + len(tail)
                grown = size + len(item)
            chunk.append(item)
            size = grown
        if chunk:
            yield start, head + b",".join(chunk) + tail

    def _call(self, method: str, path: str, content: bytes | None = None, offset: int = 0) -> Any:
        """One call with retries; the JSON answer, or the server's refusal raised.

        `offset` is the first instance's position in the whole call, so a 422 names the
        caller's row, not the chunk's. `/readyz` answering 503 with its state is an answer.
        """
        response = self._send(method, path, content)
        if response.status_code >= 400 and not _is_readiness(path, response):
            raise _refusal(response, offset)
        answer = _json_or_none(response)
        if answer is None:
            raise DriftloopError(
                f"{method} {path} answered {response.status_code} without a JSON body",
                response.status_code,
            )
        return answer

    def _send(self, method: str, path: str, content: bytes | None) -> httpx.Response:
        """Retry what is likely to pass a moment later: a refused or dropped connection, and
        a 503 (after its Retry-After). Never a 4xx (the same request is refused again), nor
        a timeout once sent: the server may still be working on it, and a prediction
        repeated for nothing would be logged twice."""
        for attempt in range(self.retries + 1):
            final = attempt == self.retries
            try:
                response = self._http.request(method, path, content=content)
            except (httpx.ReadTimeout, httpx.WriteTimeout) as error:
                raise Unavailable(
                    f"no answer from {self.url} within {self.timeout} s ({type(error).__name__})"
                ) from error
            except httpx.TransportError as error:
                if _tls_failure(error):  # a configuration problem: retrying cannot fix it
                    raise DriftloopError(
                        f"TLS with {self.url} failed: {error}; for a private CA pass "
                        "verify=<path to its CA bundle>"
                    ) from error
                if final:
                    raise Unavailable(f"cannot reach {self.url}: {error}") from error
                time.sleep(_backoff(attempt))
                continue
            if response.status_code != 503 or final or _is_readiness(path, response):
                return response
            wait = _retry_after(response)
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                refusal = _refusal(response, 0)
                raise Unavailable(
                    f"{refusal.message} (the server asks to retry after {wait:.0f} s)", 503
                )
            time.sleep(_backoff(attempt) if wait is None else wait)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _records(rows: Rows) -> tuple[list[dict[Any, Any]], pd.Index]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records"), rows.index
    if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Sequence):
        raise TypeError("rows must be a DataFrame or a list of dicts (one dict per row)")
    return [dict(row) for row in rows], pd.RangeIndex(len(rows))


def _json_value(value: Any, where: str) -> Any:
    """A cell as the JSON value the strict request model takes: numpy scalars as Python
    ones, NaN/None/pd.NA as null, an integral float as an integer; inf refused here,
    since JSON has no infinity."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ValueError(f"{where}: {value} is not a finite number; JSON cannot carry it")
        return int(value) if value.is_integer() and abs(value) < _EXACT_INTEGERS else value
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be sent; values are numbers, strings, "
        "booleans or missing"
    )


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _present(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _answer_frame(answer: dict[str, Any]) -> pd.DataFrame:
    """One predict answer as rows: per-instance lists as columns, the rest repeated."""
    frame = pd.DataFrame({"id": answer["ids"], "prediction": answer["predictions"]})
    probabilities = answer.get("probabilities")
    if probabilities is not None:
        table = np.asarray(probabilities, dtype=float).reshape(len(frame), -1)
        classes = answer.get("classes") or range(table.shape[1])
        for column, name in enumerate(classes):
            frame[f"probability_{name}"] = table[:, column]
    for name, value in answer.items():
        if name not in _PER_INSTANCE and not isinstance(value, list | dict):
            frame[name] = value
    return frame


def _item_index(location: Sequence[str | int]) -> int | None:
    """Where in a location the batch item's position is: ("instances", 3, ...),
    ("items", 3, ...) or, for feedback checked after parsing, (3, "request_id")."""
    if location and isinstance(location[0], int):
        return 0
    if len(location) >= 2 and location[0] in ("instances", "items"):
        return 1 if isinstance(location[1], int) else None
    return None


def _trimmed(location: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A location up to the field: ("instances", 3, "salary", "float") names the union
    member pydantic tried, which tells a caller nothing."""
    at = _item_index(location)
    if at is not None and len(location) > at + 1 and isinstance(location[at + 1], str):
        return location[: at + 2]
    return location


def _where(location: tuple[str | int, ...]) -> str:
    text = ""
    for part in _trimmed(location):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


def _refusal(response: httpx.Response, offset: int) -> DriftloopError:
    """The server's answer as an exception with its message (FastAPI's `detail`)."""
    status = response.status_code
    body = _json_or_none(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    errors: tuple[FieldError, ...] = ()
    if isinstance(detail, list):
        errors = tuple(_field_error(p, offset) for p in detail if isinstance(p, dict))
        grouped: dict[str, list[str]] = {}
        for error in errors:
            grouped.setdefault(_where(error.location), []).append(error.message)
        message = "; ".join(f"{w}: {' or '.join(dict.fromkeys(m))}" for w, m in grouped.items())
    elif detail is not None:
        message = detail if isinstance(detail, str) else json.dumps(detail)
    else:
        message = response.text.strip()[:500] or f"HTTP {status}"
    if status in (401, 403):
        return Unauthorized(message, status)
    if 400 <= status < 500:
        return InvalidRequest(message, status, errors)
    if status in (502, 503, 504):
        return Unavailable(message, status)
    return DriftloopError(message, status)


def _field_error(problem: dict[str, Any], offset: int) -> FieldError:
    location = list(problem.get("loc", ()))
    if location[:1] == ["body"]:
        location = location[1:]
    at = _item_index(location)
    if at is not None:
        location[at] += offset
    return FieldError(tuple(location), str(problem.get("msg", "")), str(problem.get("type", "")))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _is_readiness(path: str, response: httpx.Response) -> bool:
    """A 503 from `/readyz` carrying its state: "not ready" is an answer, not an outage."""
    if path != "/readyz":
        return False
    state = _json_or_none(response)
    return isinstance(state, dict) and "ready" in state


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, as delta-seconds or an HTTP date; None if absent or bad."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


def _tls_failure(error: BaseException) -> bool:
    """Whether a transport error is a failed TLS handshake (wrong CA, wrong host name)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
