"""Restart a dead HAProxy within a second instead of after Ray's proxy health checks.

Ray 2.60 does not watch the HAProxy process its proxy actor (`HAProxyManager`) starts: the
controller notices a dead one only after three failed proxy health checks, then replaces the
whole actor, whose new HAProxy answers 404 until it has its backends again. Measured in
`driftloop bench chaos`: ~6 s of refused requests at a 1 s check period, 0.3 % of a
10-minute soak, the one fault that kept availability under 99.9 %. The actor's config file
still names every backend, so starting HAProxy again from it restores service at once.

The restart runs inside the actor through `__ray_call__` (a Ray DeveloperAPI) and uses
private members of `ray.serve._private.haproxy` as they are in Ray 2.60 (pinned to 2.60.x in
pyproject.toml): `HAProxyManager._haproxy`, `._reload_lock`, `.event_loop` and
`HAProxyApi._proc`, `._start_and_wait_for_haproxy()`. It is the only module that depends on
them; `tests/integration/test_chaos.py` fails if a Ray upgrade changes them (the HAProxy
fault's recovery bound). Should the restart itself fail, Ray's own replacement still follows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.1
# A restart asked for and not visible yet is not asked for again before this: HAProxy
# takes ~0.5 s to answer its admin socket, longer on a loaded machine.
RESTART_PATIENCE_S = 5.0

logger = logging.getLogger(__name__)


def restart_in_manager(manager: Any) -> bool:
    """Runs inside the HAProxyManager actor: start HAProxy again if the process it owns
    has exited. Returns whether a restart was scheduled (False while one is running)."""
    api = manager._haproxy
    dead = api._proc
    if dead is None or dead.returncode is None:
        return False

    async def restart() -> None:
        async with manager._reload_lock:  # never beside one of Ray's own reloads
            if api._proc is dead:
                api._proc = await api._start_and_wait_for_haproxy()

    asyncio.run_coroutine_threadsafe(restart(), manager.event_loop)
    return True


class HAProxyWatchdog:
    """A daemon thread in the process that started Serve: when no HAProxy process of this
    home is alive, it asks the local proxy actor to start one from its current config."""

    def __init__(self, haproxy_pids: Callable[[], list[int]], proxy_actor: Callable[[], Any]):
        self._haproxy_pids = haproxy_pids
        self._proxy_actor = proxy_actor
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="haproxy-watchdog", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        known: list[int] = []  # checked every poll; /proc is scanned only when they are gone
        asked_at = float("-inf")
        while not self._stopping.wait(POLL_S):
            if any(_alive(pid) for pid in known):
                continue
            found = self._haproxy_pids()  # a reload replaces the process: find the new one
            if found or not known:
                known = found
                continue
            if time.monotonic() - asked_at < RESTART_PATIENCE_S:
                continue
            asked_at = time.monotonic()
            try:
                import ray

                scheduled = ray.get(
                    self._proxy_actor().__ray_call__.remote(restart_in_manager), timeout=5
                )
            except Exception as error:  # Ray's health check still replaces the actor
                logger.warning("HAProxy is down and could not be restarted: %s", error)
                continue
            if scheduled:
                self.restarts += 1
                logger.warning("HAProxy exited; restarting it from its current config")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_proxy_actor() -> Any:
    """The proxy actor (HAProxyManager) of the node this driver is on."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE, SERVE_PROXY_NAME

    node_id = ray.get_runtime_context().get_node_id()
    return ray.get_actor(f"{SERVE_PROXY_NAME}-{node_id}", namespace=SERVE_NAMESPACE)
