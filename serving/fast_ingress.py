"""The `:predict` route without FastAPI's per-request work, for well-formed requests only.

A py-spy profile of one replica at c=16 put FastAPI and Starlette (routing, the request
object, dependency solving, reading and checking the body) at ~22 % of the replica's CPU,
more than our whole handler (~13 %, the model call included; docs/benchmarks.md).
`FastPredict` is a middleware of the FastAPI app, behind `LoadShed` (a fast answer is
counted and shed as any other) and in front of `BodyLimit`. A `POST` that the predict route
itself matches, for the model served, with `Content-Type: application/json`, a body within
the limit that orjson parses and the route's own body model validates (the same
`validate_python(..., from_attributes=True)` call FastAPI makes) goes to `predict` at once.
Everything else, a body that fails here included, goes on to FastAPI with the messages
already read replayed: every 4xx is FastAPI's own, and so is the OpenAPI schema.

Where orjson and FastAPI's `json.loads` differ, nothing answered differs: NaN, Infinity, a
lone surrogate or a byte-order mark orjson refuses (FastAPI's path then answers), and an
integer beyond 64 bits it reads as the float `float(int)` gives, which a float feature
validates to either way and every integer field refuses.
"""

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON = b"application/json"


class FastPredict:
    """Answers well-formed predictions itself; hands everything else to `app` unchanged."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[BaseRoute],
        path: str,
        body: type[BaseModel],
        model_name: str,
        max_bytes: int,
        predict: Callable[[list[Any]], Awaitable[Response]],
        on_path: Callable[[bool], None],
    ) -> None:
        # Built by Starlette on the first request, when every route exists.
        self.app = app
        self.route = next(r for r in routes if getattr(r, "path", None) == path)
        self.body = TypeAdapter(body)
        self.model_name = model_name
        self.max_bytes = max_bytes
        self.predict = predict
        self.on_path = on_path  # True: answered here, False: handed to FastAPI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith(":predict"):
            await self.app(scope, receive, send)
            return
        match, child = self.route.matches(scope)
        if match is Match.NONE:  # not the predict route at all
            await self.app(scope, receive, send)
            return
        if not (
            match is Match.FULL
            and child["path_params"].get("model") == self.model_name
            and self._takes(scope["headers"])
        ):  # FastAPI's 404, 405, 413, or whatever it makes of this content type
            self.on_path(False)
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if message["type"] != "http.request" or size > self.max_bytes:
                await self._hand_over(scope, messages, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            instances = self.body.validate_python(
                orjson.loads(b"".join(chunks)), from_attributes=True
            ).instances
        except Exception:  # whatever it is, FastAPI answers it as it always did
            await self._hand_over(scope, messages, receive, send)
            return
        self.on_path(True)
        response = await self.predict(instances)
        await response(scope, receive, send)

    def _takes(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """A JSON body that can be within the limit (the first of each header counts, as in
        Starlette's `Headers.get`)."""
        content_type = length = None
        for name, value in headers:
            if name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"content-length" and length is None:
                length = value
        if content_type is None or content_type.split(b";", 1)[0].strip().lower() != JSON:
            return False
        return not (length is not None and length.isdigit() and int(length) > self.max_bytes)

    async def _hand_over(
        self, scope: Scope, messages: list[Message], receive: Receive, send: Send
    ) -> None:
        """FastAPI gets the request as it arrived: what was read first, then the rest."""
        self.on_path(False)
        pending = deque(messages)

        async def replayed() -> Message:
            return pending.popleft() if pending else await receive()

        await self.app(scope, replayed, send)
