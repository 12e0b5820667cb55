"""Serving the app: HTTP on ``POST /slack/events`` (waitress, a production WSGI server) with
``GET /healthz``, or Socket Mode.

>>> server = http_server(app, health, host="127.0.0.1", port=0)   # doctest: +SKIP
>>> server.run()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

EVENTS_PATH = "/slack/events"
Health = Callable[[], dict[str, Any]]


class Router:
    """WSGI: ``/slack/events`` goes to Bolt, ``/healthz`` reports health, the rest is 404."""

    def __init__(self, app: App, health: Health) -> None:
        self.bolt = SlackRequestHandler(app, path=EVENTS_PATH)
        self.health = health

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
        return self.bolt(environ, start_response)


def http_server(app: App, health: Health, host: str, port: int, threads: int = 16) -> Any:
    """A waitress server (not started: call ``.run()``; ``.close()`` stops it)."""
    from waitress.server import create_server

    return create_server(
        Router(app, health),
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
