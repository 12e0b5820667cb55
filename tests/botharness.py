"""A running authguard bot for tests: the real Runtime over HTTP, a fake Slack, a real slapd.

>>> with BotHarness(tmp_path, slapd) as bot:                   # doctest: +SKIP
...     status, _ = bot.command("status EX01")
...     bot.fake.wait_for("response_url")

Requests reach the bot through its real ``POST /slack/events`` endpoint, signed exactly as Slack
signs them; the bot's Web API calls go to :class:`tests.fakeslack.FakeSlack` on loopback.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from bot.config import Secret, Settings
from handlers.notifier import Pacer
from handlers.runtime import Runtime
from tests import slackreq
from tests.fakeslack import FakeSlack
from tests.slapd_server import SlapdServer

SIGNING_SECRET = "test-signing-secret-123"
BOT_TOKEN = "xoxb-test-token-456"
CHANNEL = "C0SECURITY"


def bot_settings(tmp: Path, slapd: SlapdServer, fake: FakeSlack, **overrides: Any) -> Settings:
    """Settings for a bot that talks to ``slapd`` (as the service account) and ``fake``."""
    values: dict[str, Any] = {
        "ldap_url": slapd.ldaps_url,
        "ldap_ca_file": str(slapd.ca_file),
        "ldap_bind_dn": slapd.svc_dn,
        "ldap_password": Secret(slapd.svc_password),
        "db": str(tmp / "authguard.db"),
        "slack_bot_token": Secret(BOT_TOKEN),
        "slack_signing_secret": Secret(SIGNING_SECRET),
        "slack_channel": CHANNEL,
        "slack_api_url": fake.base_url,
        "audit_schedule": "0 0 1 1 *",
        "summary_schedule": "0 0 1 1 *",
    }
    values.update(overrides)
    return Settings(**values)


class BotHarness:
    """Start the bot's HTTP server on a free loopback port; stop everything on exit."""

    def __init__(
        self,
        tmp: Path,
        slapd: SlapdServer,
        fake: FakeSlack | None = None,
        **overrides: Any,
    ) -> None:
        self.own_fake = fake is None
        self.fake = fake or FakeSlack()
        self.fake.start()
        self.settings = bot_settings(tmp, slapd, self.fake, **overrides)
        self.runtime = Runtime(self.settings, pacer=Pacer(0))
        self.runtime.start()
        self.server = self.runtime.http("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.events_url = self.url + "/slack/events"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def __enter__(self) -> BotHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.runtime.stop()
        self.thread.join(timeout=5)
        if self.own_fake:
            self.fake.stop()

    # -- requests as Slack sends them ------------------------------------------------------
    def command(self, text: str, user_id: str = "U1", user_name: str = "alice", **kw: Any):
        """Send ``/authguard <text>``; returns ``(status, body)`` of the bot's HTTP answer."""
        kw.setdefault("response_url", self.fake.response_url("cmd"))
        body = slackreq.slash_command_body(text, user_id=user_id, user_name=user_name, **kw)
        return slackreq.post_form(self.events_url, body, SIGNING_SECRET)

    def event(self, event: dict[str, Any], event_id: str | None = None):
        """Send an event callback (``app_mention``, ``message.im``, ``app_home_opened``)."""
        kwargs = {"event_id": event_id} if event_id else {}
        body = slackreq.event_body(event, **kwargs)
        return slackreq.post_event(self.events_url, body, SIGNING_SECRET)

    def click(self, action_id: str, value: str, user_id: str = "U1", **kw: Any):
        """Click a button on a message, as ``user_id``."""
        kw.setdefault("response_url", self.fake.response_url("click"))
        body = slackreq.block_actions_body(action_id, value, user_id=user_id, **kw)
        return slackreq.post_form(self.events_url, body, SIGNING_SECRET)

    def submit(self, callback_id: str, values: dict, **kw: Any):
        """Submit a modal."""
        body = slackreq.view_submission_body(callback_id, values, **kw)
        return slackreq.post_form(self.events_url, body, SIGNING_SECRET)
