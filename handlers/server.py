"""Serving the app: HTTP on ``POST /slack/events`` (waitress, a production WSGI server) with
``GET /healthz``, or Socket Mode.

>>> server = http_server(app, health, host="127.0.0.1", port=0)   # doctest: +SKIP
>>> server.run()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.lazy_listener.thread_runner import ThreadLazyListenerRunner

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


class LazyPool(ThreadPoolExecutor):
    """The threads for Bolt's lazy listeners (the work after an ack), acks first.

    Each ack is answered in its request's thread (``process_before_response``, see
    :mod:`handlers.app`); the lazy halves run here. A lazy task starts once no request is being
    answered (at most ``max_wait`` seconds after it was submitted), so under a burst of clicks
    the acks do not compete for the interpreter with the work they asked for (re-reads,
    remediation jobs, redraws) and Slack's 3 s never runs out.
    """

    def __init__(self, workers: int = 5, max_wait: float = 0.5) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="lazy")
        self.max_wait = max_wait
        self._answering = 0
        self._idle = threading.Condition()

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Around the answer to one request."""
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                if not self._answering:
                    self._idle.notify_all()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        deadline = time.monotonic() + self.max_wait

        def after_the_acks() -> Any:
            with self._idle:
                self._idle.wait_for(
                    lambda: not self._answering, max(0.0, deadline - time.monotonic())
                )
            return fn(*args, **kwargs)

        return super().submit(after_the_acks)


def separate_lazy_work(app: App) -> LazyPool | None:
    """Give Bolt's lazy listeners a :class:`LazyPool` (``None`` if this Bolt is built otherwise)."""
    runner = app.listener_runner
    lazy = getattr(runner, "lazy_listener_runner", None)
    if isinstance(lazy, ThreadLazyListenerRunner) and lazy.executor is runner.listener_executor:
        lazy.executor = LazyPool()
        return lazy.executor
    return None


def http_server(app: App, health: Health, host: str, port: int, threads: int = 64) -> Any:
    """A waitress server (not started: call ``.run()``; ``.close()`` stops it).

    The threads are many so that a burst of clicks is read and answered in one wave: each
    holds its thread only while its ack half runs.
    """
    from waitress.server import create_server

    return create_server(
        Router(app, health, separate_lazy_work(app)),
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
