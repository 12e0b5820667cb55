"""``authguard serve``: wire the core, the Slack app, the notifier and the scheduler together.

>>> runtime = Runtime(settings)          # doctest: +SKIP
>>> runtime.serve_http("127.0.0.1", 3000)  # doctest: +SKIP

Tests build the same runtime, pointed at a fake Slack Web API and a private slapd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bot import remediation
from bot.config import Settings
from bot.directory import Directory, connect
from bot.scheduler import build_scheduler
from bot.service import Authguard
from bot.summary import build_summary
from handlers import blocks
from handlers.app import build_app
from handlers.clients import make_client
from handlers.notifier import Notifier, Pacer
from handlers.offers import Offers
from handlers.server import http_server, socket_mode_handler
from handlers.services import Services
from storage import chat as chat_store
from storage import open_store

log = logging.getLogger(__name__)


def required_settings(socket_mode: bool) -> tuple[str, ...]:
    """The Slack settings ``serve`` needs (check them with ``Settings.require``)."""
    mode = "slack_app_token" if socket_mode else "slack_signing_secret"
    return ("slack_bot_token", "slack_channel", mode)


class Runtime:
    """Everything ``authguard serve`` runs, built once, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        socket_mode: bool = False,
        open_directory: Callable[[], Directory] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        settings.require(*required_settings(socket_mode))
        self.settings = settings
        self.socket_mode = socket_mode
        self.store = open_store(settings.db)
        self.core = Authguard(settings, self.store, open_directory or (lambda: connect(settings)))
        self.client = make_client(settings)
        self.notifier = Notifier(
            self.client,
            self.store,
            settings.slack_channel or "",
            pacer,
            decorate=Offers(settings, self.store),
        )
        self.core.on_audit(self.notifier.on_audit)
        self.services = Services(settings, self.store, self.core, self.notifier)
        self.app = build_app(self.services, self.client, socket_mode=socket_mode)
        self.scheduler = build_scheduler(
            settings,
            self.store,
            {
                "audit": self.scheduled_audit,
                "summary": self.post_summary,
                "retry": self.maintenance,
            },
        )
        self._server: Any = None
        self._socket: Any = None

    # -- scheduled jobs --------------------------------------------------------------------
    def scheduled_audit(self) -> None:
        self.core.audit(trigger="schedule", requested_by="scheduler")

    def maintenance(self) -> None:
        """Every few minutes: settle jobs whose process died, expire old requests, and deliver
        warnings that Slack refused earlier."""
        self.reconcile()
        self.core.fail_stale_runs()
        remediation.expire_requests(self.store)
        self.notifier.retry_pending()

    def post_summary(self) -> str | None:
        """Post the daily summary to the channel; return the message ts (``None`` when Slack
        failed: the summary is kept and the retry job posts it)."""
        summary = build_summary(self.store)
        text, body = blocks.summary_message(summary)
        channel = self.settings.slack_channel or ""
        response = self.notifier.say(channel, text, blocks=body)
        audit_id = summary.last_success["id"] if summary.last_success else None
        ts = response["ts"] if response else None
        chat_store.record_summary(
            self.store, audit_id, response["channel"] if response else channel, ts
        )
        return ts

    # -- life cycle ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"ok": true, ...}`` when the scheduler runs and the database answers."""
        report: dict[str, Any] = {"scheduler": bool(self.scheduler.running)}
        try:
            self.store.db.execute("select 1").fetchone()
            report["database"] = True
        except Exception as exc:  # any failure means unhealthy, with the reason
            report["database"] = False
            report["error"] = exc.__class__.__name__
        report["ok"] = report["scheduler"] and report["database"]
        return report

    def start(self) -> None:
        """Settle jobs a crash left unfinished, then start the scheduler (the listeners are
        served by :meth:`serve_http` or socket mode)."""
        self.reconcile()
        self.core.fail_stale_runs()
        self.scheduler.start()

    def reconcile(self) -> list[Any]:
        """Find remediation jobs left unfinished by a crash, record what the directory says
        actually happened (never writing again), and redraw their warnings."""
        results = remediation.reconcile_unfinished(
            self.settings, self.store, self.core.open_directory
        )
        for result in results:
            log.warning("reconciled job %s: %s", result.job_id, result.message)
        # once per server, and not while the directory cannot say what happened
        settled = {r.server for r in results if r.outcome != remediation.UNAVAILABLE}
        for server in settled - {None, ""}:
            self.notifier.refresh(server)
        return results

    def http(self, host: str, port: int) -> Any:
        """The HTTP server, not yet running (``.run()``); ``.effective_port`` tells the port."""
        self._server = http_server(self.app, self.health, host, port)
        return self._server

    def serve_http(self, host: str, port: int) -> None:
        self.start()
        server = self.http(host, port)
        log.info("authguard listening on http://%s:%s/slack/events", host, server.effective_port)
        try:
            server.run()
        finally:
            self.stop()

    def serve_socket(self) -> None:
        self.start()
        token = self.settings.slack_app_token.get() if self.settings.slack_app_token else ""
        self._socket = socket_mode_handler(self.app, token)
        try:
            self._socket.start()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
