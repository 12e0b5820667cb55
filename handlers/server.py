"""Serving the app: HTTP on ``POST /slack/events`` (waitress, a production WSGI server) with
``GET /healthz``, or Socket Mode.

>>> server = http_server(app, health, host="127.0.0.1", port=0)   # doctest: +SKIP
>>> server.run()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from handlers.lazy import LazyPool

EVENTS_PATH = "/slack/events"
Health = Callable[[], dict[str, Any]]


class Router:
    """WSGI: ``/slack/events`` goes to Bolt, ``/healthz`` reports health, the rest is 404."""

    def __init__(self, app: App, health: Health, lazy: LazyPool | None = None) -> None:
        self.bolt = SlackRequestHandler(app, path=EVENTS_PATH)
        self.health = health
        self.lazy = lazy

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz" and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            report = self.health()
            status = "200 OK" if report.get("ok") else "503 Service Unavailable"
            body = json.dumps(report).encode()
            start_response(
                status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        with self.lazy.answering() if self.lazy is not None else nullcontext():
            return self.bolt(environ, start_response)


def http_server(app: App, health: Health, host: str, port: int, threads: int = 64) -> Any:
    """A waitress server (not started: call ``.run()``; ``.close()`` stops it).

    The threads are many so that a burst of clicks is read and answered in one wave: each
    holds its thread only while its ack half runs.
    """
    from waitress.server import create_server

    lazy = app.listener_runner.listener_executor  # build_app gives it a LazyPool

    return create_server(
        Router(app, health, lazy if isinstance(lazy, LazyPool) else None),
        host=host,
        port=port,
        threads=threads,
        ident="authguard",
        clear_untrusted_proxy_headers=True,
        max_request_body_size=1 << 20,
    )


def socket_mode_handler(app: App, app_token: str) -> Any:
    """Bolt's Socket Mode handler (``.start()`` blocks; ``.close()`` stops it)."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, app_token)
