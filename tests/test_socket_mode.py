"""Socket Mode end to end: ``Runtime.serve_socket`` over a real WebSocket.

Slack cannot be reached from here, so ``apps.connections.open`` on the fake Web API hands out the
URL of :class:`tests.fakesocket.FakeSocketMode`, a WebSocket server on loopback, and the bot's
real Socket Mode client (slack_sdk's, through Bolt's handler) connects to it. Envelopes go in as
Slack sends them; the test checks each acknowledgement and what the bot then did.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest

from bot.config import Secret
from handlers.notifier import Pacer
from handlers.runtime import Runtime
from tests import slackreq
from tests.botharness import BOT_TOKEN, CHANNEL, bot_settings
from tests.fakeslack import FakeSlack
from tests.fakesocket import FakeSocketMode
from tests.helpers import wait_until
from tests.slapd_server import SlapdServer

APP_TOKEN = "xapp-1-test-app-token-789"


@pytest.fixture
def socket_bot(tmp_path, slapd: SlapdServer) -> Iterator[tuple[Runtime, FakeSlack, FakeSocketMode]]:
    """``authguard serve`` in Socket Mode (no signing secret, an app token), connected."""
    with FakeSlack() as fake, FakeSocketMode() as socket_mode:
        fake.socket_url = socket_mode.url
        settings = bot_settings(
            tmp_path,
            slapd,
            fake,
            slack_signing_secret=None,
            slack_app_token=Secret(APP_TOKEN),
        )
        runtime = Runtime(settings, socket_mode=True, pacer=Pacer(0))
        # serve_socket blocks for as long as the process lives: a daemon thread
        threading.Thread(target=runtime.serve_socket, name="serve-socket", daemon=True).start()
        try:
            socket_mode.wait_connected()
            yield runtime, fake, socket_mode
        finally:
            runtime.stop()


def _form(body: str) -> dict[str, str]:
    return dict(parse_qsl(body, keep_blank_values=True))


def test_the_app_token_opens_the_socket(socket_bot):
    _, fake, socket_mode = socket_bot
    opened = fake.calls("apps.connections.open")[-1]
    assert opened.headers["authorization"] == f"Bearer {APP_TOKEN}"
    assert socket_mode.handshakes[-1].startswith("GET /link/?ticket=test-ticket")
    assert fake.calls("auth.test")[-1].headers["authorization"] == f"Bearer {BOT_TOKEN}"


def test_a_slash_command_is_answered_in_its_acknowledgement(socket_bot):
    _, _, socket_mode = socket_bot
    envelope = socket_mode.send("slash_commands", _form(slackreq.slash_command_body("help")))
    ack = socket_mode.wait_ack(envelope)
    assert ack["payload"]["text"] == "authguard usage"
    assert "status" in json.dumps(ack["payload"]["blocks"])


def test_a_recheck_click_over_the_socket_is_acknowledged_and_done(socket_bot):
    runtime, fake, socket_mode = socket_bot
    runtime.scheduled_audit()  # posts the warnings, with their buttons
    recheck = next(
        element["value"]
        for call in fake.calls("chat.postMessage")
        if call.params.get("channel") == CHANNEL
        for block in call.params.get("blocks") or []
        for element in block.get("elements") or []
        if element.get("action_id") == "recheck"
    )
    payload = json.loads(
        _form(slackreq.block_actions_body("recheck", recheck, channel_id=CHANNEL))["payload"]
    )
    envelope = socket_mode.send("interactive", payload)
    assert socket_mode.wait_ack(envelope)["envelope_id"] == envelope
    reply = wait_until(lambda: fake.calls("chat.postEphemeral"), what="the recheck's reply")[-1]
    assert reply.params["text"].startswith("Rechecked ")


def test_a_mention_over_the_socket_is_answered_in_its_thread(socket_bot):
    runtime, fake, socket_mode = socket_bot
    runtime.scheduled_audit()
    event = slackreq.app_mention_event("<@UBOT> status EX2003-05", channel="C0SOCK", ts="3.0001")
    envelope = socket_mode.send("events_api", json.loads(slackreq.event_body(event)))
    assert socket_mode.wait_ack(envelope)["envelope_id"] == envelope
    posts = wait_until(
        lambda: [
            c.params for c in fake.calls("chat.postMessage") if c.params["channel"] == "C0SOCK"
        ],
        what="the reply in the mention's thread",
    )
    assert posts[-1]["thread_ts"] == "3.0001"
    assert "EX2003-05" in json.dumps(posts[-1]["blocks"])
