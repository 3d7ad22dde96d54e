"""defakenet's Serve app on the session's Ray instance, on 127.0.0.1 and a free port, for the tests that talk to it
over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow_server import free_port


@contextmanager
def serve_app(args, env_vars: dict[str, str] | None = None) -> Iterator[str]:
    """Run `make_app(args, env_vars)` under Ray Serve; yields the base URL; shuts Serve down afterwards."""
    from ray import serve

    from defakenet.serve import make_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(make_app(args, env_vars), name="defakenet", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
