"""The serving admin API as the canary job and the CLI use it (API key from settings)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from driftloop.settings import Settings

PEM_BEGIN = "-----BEGIN"


def serving_verify(settings: Settings) -> ssl.SSLContext | bool:
    """How a caller checks serving's certificate: against `serving_ca` when set, else the
    system's trust store plus serving's own certificate when this machine serves TLS (a
    self-signed certificate is its own CA)."""
    trusted = settings.serving_ca or settings.serve_tls_certfile
    if not trusted:
        return True
    context = ssl.create_default_context()
    if trusted.lstrip().startswith(PEM_BEGIN):
        context.load_verify_locations(cadata=trusted)
    else:
        context.load_verify_locations(cafile=trusted)
    return context


class ServingError(Exception):
    """Serving refused or could not be reached; the message says which."""


class ServingAdmin:
    def __init__(self, settings: Settings, timeout_s: float = 10) -> None:
        key = settings.admin_api_key
        self._client = httpx.Client(
            base_url=settings.serving_url,
            verify=serving_verify(settings),
            headers={"X-API-Key": key.get_secret_value()} if key else {},
            timeout=timeout_s,
        )

    def readiness(self) -> dict[str, Any]:
        return self._call("GET", "/readyz", ok=(200, 503))

    def set_routing(
        self, canary_weight: float | None = None, shadow: bool | None = None
    ) -> dict[str, Any]:
        body = {
            k: v
            for k, v in {"canary_weight": canary_weight, "shadow": shadow}.items()
            if v is not None
        }
        return self._call("POST", "/admin/routing", json=body)

    def reload(self) -> dict[str, Any]:
        return self._call("POST", "/admin/reload")

    def _call(
        self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServingError(
                f"serving at {self._client.base_url} unreachable: {error}"
            ) from error
        if response.status_code not in ok:
            raise ServingError(
                f"{method} {path} answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()
