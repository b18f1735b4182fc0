"""`driftloop bench serve`: this application against `mlflow models serve` and bare FastAPI.

Every target runs on 127.0.0.1, one after another, and is driven by the same load
generator at fixed concurrency over keep-alive connections: `wrk` when it is installed
(CI installs it), else a minimal asyncio HTTP/1.1 client. The generator shares the two
cores with the server, so its own cost per request is charged to the server; wrk's is
the smallest (measured here: ~50 % more requests/s for the same server than the asyncio
client). The swap measurement always uses the asyncio client, which must run beside the
promotion in the same process.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from driftloop.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry, configure_tracking
from driftloop.settings import Settings
from serving import launch
from serving.app import PINNED_THREADS, ServeArgs

CONCURRENCY = 16


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def _request_bytes(port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if "content-length" in headers:
        return status, head + await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        body += await reader.readexactly(size + 2)
        if size == 0:
            return status, head + body


async def _load(url: str, path: str, body: dict, concurrency: int, seconds: float) -> Load:
    host, port = url.removeprefix("http://").split(":")
    request = _request_bytes(int(port), path, body)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                try:
                    status, _ = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return Load(
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 2) if len(ms) else float("nan"),
        p99_ms=round(float(np.percentile(ms, 99)), 2) if len(ms) else float("nan"),
        errors=errors,
        requests=len(latencies),
    )


def load(url: str, path: str, body: dict, concurrency: int, seconds: float) -> Load:
    if shutil.which("wrk"):
        return _wrk(url + path, body, concurrency, seconds)
    return asyncio.run(_load(url, path, body, concurrency, seconds))


def generator() -> str:
    """What drives the load, for the record."""
    return "wrk -t1 --latency" if shutil.which("wrk") else "asyncio HTTP/1.1 client"


_WRK_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk(url: str, body: dict, concurrency: int, seconds: float) -> Load:
    """One wrk run posting `body` over and over."""
    body_lua = f"wrk.body = [==[{json.dumps(body, ensure_ascii=False)}]==]\n"  # long string
    return run_wrk(url, body_lua, concurrency, seconds)


def run_wrk(
    url: str, script: str, concurrency: int, seconds: float, core: str | None = None
) -> Load:
    """One wrk run (one thread: a second would take CPU from the server) of a Lua `script`
    that picks the bodies; every request is a JSON POST. `core`: wrk pinned there."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        lua.write(script)
    try:
        duration = f"-d{max(1, round(seconds))}s"
        pinned = ["taskset", "-c", core] if core is not None else []
        out = subprocess.run(
            [*pinned, "wrk", "-t1", f"-c{concurrency}", duration, "--latency", "-s", lua.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(lua.name)
    return _parse_wrk(out)


def _parse_wrk(out: str) -> Load:
    def latency(percent: int) -> float:
        number, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(\w+)", out, re.M).groups()
        return round(float(number) * _WRK_UNITS_MS[unit], 2)

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(map(int, socket.groups())) if socket else 0
    return Load(
        rps=round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        p50_ms=latency(50),
        p99_ms=latency(99),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
        requests=requests,
    )


def _wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout_s:.0f}s")


def _tree_rss_mb(root: psutil.Process, include_root: bool = True) -> float:
    processes = [root, *root.children(recursive=True)] if include_root else root.children(True)
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def champion_payload(registry: Registry, folder: Path) -> dict[str, Any]:
    """The first row of the champion's own input example: a realistic payload. The model is
    downloaded into `folder`."""
    from mlflow.models import Model

    champion = registry.by_alias(CHAMPION)
    assert champion is not None, "no @champion to take a payload from"
    local = registry.download(champion.version, folder)
    frame = Model.load(str(local)).load_input_example(str(local))
    return json.loads(frame.head(1).to_json(orient="records"))[0]


def _subprocess_env(settings: Settings) -> dict[str, str]:
    # mlflow models serve execs `uvicorn` by name: the venv's bin must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        **PINNED_THREADS,
        "PATH": path,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
    }


def bench_mlflow(settings: Settings, instance: dict, seconds: float, port: int) -> dict:
    """`mlflow models serve` on @champion, 2 workers (one per core), threads pinned."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{settings.model_name}@{CHAMPION}",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--env-manager",
        "local",
        "-w",
        "2",
    ]
    return _bench_process(
        command,
        settings,
        f"http://127.0.0.1:{port}",
        "/invocations",
        {"dataframe_records": [instance]},
        seconds,
        "2 uvicorn workers, OMP_NUM_THREADS=1",
    )


def bench_bare(settings: Settings, instance: dict, seconds: float, port: int) -> dict:
    """FastAPI + uvicorn calling `model.predict` once per request, one worker per core."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.serve:bare_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
    ]
    # Where `champion_payload` downloaded the champion (MLflow nests it one level down).
    (model_file,) = (settings.home / "bench" / "model").rglob("model.skops")
    os.environ["DRIFTLOOP_BENCH_MODEL_DIR"] = str(model_file.parent)
    return _bench_process(
        command,
        settings,
        f"http://127.0.0.1:{port}",
        "/predict",
        instance,
        seconds,
        "2 uvicorn workers, OMP_NUM_THREADS=1",
    )


def _bench_process(
    command: list[str],
    settings: Settings,
    url: str,
    path: str,
    body: dict,
    seconds: float,
    config: str,
) -> dict:
    settings.logs.mkdir(parents=True, exist_ok=True)
    with open(settings.logs / "bench-serve.log", "ab") as log:
        server = subprocess.Popen(
            command, env=_subprocess_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(url + "/health" if "invocations" in path else url + "/docs")
        load(url, path, body, CONCURRENCY, min(seconds, 3))  # warm-up
        result = load(url, path, body, CONCURRENCY, seconds)
        rss = _tree_rss_mb(psutil.Process(server.pid))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return {**asdict(result), "rss_mb": rss, "config": config, "generator": generator()}


def bare_app() -> Any:
    """The naive ceiling: load the pipeline once, one `predict` per request."""
    import pandas as pd
    import skops.io
    from fastapi import FastAPI

    from driftloop.training import TRUSTED_TYPES

    model = skops.io.load(
        Path(os.environ["DRIFTLOOP_BENCH_MODEL_DIR"]) / "model.skops", trusted=TRUSTED_TYPES
    )
    app = FastAPI()

    @app.post("/predict")
    def predict(row: dict[str, Any]) -> dict[str, Any]:
        return {"prediction": model.predict(pd.DataFrame([row])).tolist()}

    return app


def _second_version(registry: Registry) -> str:
    """Another version to swap to: the challenger, or the champion re-registered."""
    challenger = registry.by_alias(CHALLENGER)
    if challenger is not None:
        return challenger.version
    champion = registry.by_alias(CHAMPION)
    assert champion is not None
    source = registry.client.get_model_version(registry.name, champion.version)
    created = registry.register(
        source.source.removeprefix("models:/"),
        champion.run_id or "",
        champion.tags,
        "re-registered by driftloop bench serve",
    )
    return created.version


def bench_ours(settings: Settings, instance: dict, seconds: float, replicas: int) -> dict:
    path = f"/v1/models/{settings.model_name}:predict"
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    aliases = {a: registry.by_alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}
    os.environ.setdefault("DRIFTLOOP_ADMIN_API_KEY", "bench-" + os.urandom(16).hex())
    key = os.environ["DRIFTLOOP_ADMIN_API_KEY"]
    args = ServeArgs(home=str(settings.home), num_replicas=replicas)
    results: dict[str, Any] = {}
    try:
        url = launch.start(settings, args)
        one = {"instances": [instance]}
        load(url, path, one, CONCURRENCY, min(seconds, 3))
        results["ours"] = {
            **asdict(load(url, path, one, CONCURRENCY, seconds)),
            "config": f"{replicas} replica(s), HAProxy + direct ingress, adaptive @serve.batch, "
            "Serve access log off, OMP_NUM_THREADS=1",
            "generator": generator(),
        }
        light = load(url, path, one, 1, seconds)
        results["light"] = {"p50_ms": light.p50_ms, "p99_ms": light.p99_ms}
        hundred = {"instances": [instance] * 100}
        batch = load(url, path, hundred, 4, seconds)
        results["batch_predictions_per_s"] = round(batch.rps * 100, 1)
        results["swap"] = _swap(url, path, one, registry, key, seconds)
        # Ray's processes (GCS, raylet, controller, replica, HAProxy), not this driver.
        results["rss_mb"] = _tree_rss_mb(psutil.Process(), include_root=False)
    finally:
        launch.stop(settings)
        for alias, info in aliases.items():
            if info is None:
                registry.delete_alias(alias)
            else:
                registry.set_alias(alias, info.version)
    return results


def _swap(url: str, path: str, body: dict, registry: Registry, key: str, seconds: float) -> dict:
    """Promote the challenger under load, then call reload (as Dagster's promotion does).

    The challenger is loaded (and warmed) before the promotion, as it is whenever a canary
    or shadow runs, so the swap is the alias move being seen plus one assignment.
    """
    target = _second_version(registry)
    headers = {"X-API-Key": key}
    registry.set_alias(CHALLENGER, target)
    httpx.post(f"{url}/admin/reload", headers=headers, timeout=60).raise_for_status()

    async def run() -> dict:
        task = asyncio.create_task(_load(url, path, body, CONCURRENCY, seconds))
        await asyncio.sleep(seconds / 3)
        moved = time.perf_counter()
        await asyncio.to_thread(registry.promote, target)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await client.post("/admin/reload", headers=headers)
            while True:
                r = await client.post(path, json=body)
                if r.headers.get("x-model-version") == target:
                    break
            client_ms = (time.perf_counter() - moved) * 1000
            result = await task  # the load went on past the swap: every replica answered
            # Each replica times its own swap; /readyz reaches one at a time: the slowest seen.
            swaps = [
                (await client.get("/readyz", headers=headers)).json()["last_swap_ms"]
                for _ in range(20)
            ]
        seen = [ms for ms in swaps if ms is not None]
        return {
            "failed_requests": result.errors,
            "swap_ms": round(max(seen), 1) if seen else None,
            "alias_move_to_first_answer_ms": round(client_ms, 1),
            "requests": result.requests,
        }

    return asyncio.run(run())


def run(settings: Settings, quick: bool, json_path: Path, replicas: int = 2) -> dict[str, Any]:
    """All targets, one after another; writes and returns the result."""
    configure_tracking(settings)
    seconds = 5.0 if quick else 20.0
    registry = Registry(settings.mlflow_tracking_uri, settings.model_name)
    instance = champion_payload(registry, settings.home / "bench" / "model")
    ours = bench_ours(settings, instance, seconds, replicas)
    mlflow = bench_mlflow(settings, instance, seconds, settings.serve_port + 1)
    bare = bench_bare(settings, instance, seconds, settings.serve_port + 2)
    result = {
        "ours": ours["ours"],
        "mlflow": mlflow,
        "bare": bare,
        "light": ours["light"],
        "batch_predictions_per_s": ours["batch_predictions_per_s"],
        "swap": ours["swap"],
        "rss_mb": ours["rss_mb"],
    }
    json_path.write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    """The comparison a person reads: absolute numbers and ratios to mlflow and bare."""
    lines = [f"{'target':<8}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  vs mlflow  vs bare"]
    for name in ("ours", "mlflow", "bare"):
        row = result[name]
        ratio_m = row["rps"] / result["mlflow"]["rps"] if result["mlflow"]["rps"] else float("nan")
        ratio_b = row["rps"] / result["bare"]["rps"] if result["bare"]["rps"] else float("nan")
        lines.append(
            f"{name:<8}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['errors']:>8}  {ratio_m:>8.2f}x {ratio_b:>6.2f}x"
        )
    p99_ratio = result["ours"]["p99_ms"] / result["mlflow"]["p99_ms"]
    lines += [
        f"p99 ours/mlflow: {p99_ratio:.2f}",
        f"light (c=1): p50 {result['light']['p50_ms']} ms, p99 {result['light']['p99_ms']} ms",
        f"batch (100 instances/request): {result['batch_predictions_per_s']:.0f} predictions/s",
        f"swap: {result['swap']}",
        f"rss: {result['rss_mb']} MB",
    ]
    return "\n".join(lines)
