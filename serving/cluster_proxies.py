"""`python -m serving.cluster_proxies`: Serve's HTTP proxies on a running Ray cluster.

What `serve start --http-host H --http-port P` does on the compose Ray head, plus what that
command has no flags for: TLS from `DRIFTLOOP_SERVE_TLS_CERTFILE`/`_KEYFILE` (the same
check as `driftloop serve`). Host and port come from `DRIFTLOOP_SERVE_HOST`/`_PORT`. Run it
before `serve deploy serving/serve_config.yaml`: proxy options are fixed when Serve starts,
so the config file's `http_options` then do not apply.
"""

from __future__ import annotations

import os

from driftloop.settings import Settings, load_settings
from serving.launch import proxy_options

SERVE_NAMESPACE = "serve"  # the namespace `serve start` connects in


def start(settings: Settings, address: str = "auto") -> str:
    """Start Serve's proxies on the cluster at `address`; returns the URL they answer at."""
    import ray
    from ray import serve

    options = proxy_options(settings)  # a bad TLS setting fails here, before Ray
    ray.init(address=address, namespace=SERVE_NAMESPACE, log_to_driver=False)
    serve.start(proxy_location="EveryNode", http_options=options)
    scheme = "https" if "ssl_certfile" in options else "http"
    return f"{scheme}://{settings.serve_host}:{settings.serve_port}"


if __name__ == "__main__":
    url = start(load_settings(), os.environ.get("RAY_ADDRESS", "auto"))
    print(f"Serve's proxies answer at {url}")
