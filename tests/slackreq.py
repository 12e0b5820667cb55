"""Drive a Bolt app through its real HTTP endpoint the way Slack does.

* :func:`sign` / :func:`post` produce correctly signed (or deliberately forged) requests.
* Body builders produce what Slack sends: slash commands and interactivity payloads are
  ``application/x-www-form-urlencoded`` (:data:`FORM`), Events API envelopes are JSON
  (:data:`JSON`).
* :class:`BoltServer` serves a Bolt ``App`` over HTTP on 127.0.0.1 (port 0) in a thread.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.loopback import serve_in_thread

__all__ = [
    "FORM",
    "JSON",
    "BoltServer",
    "app_home_opened_event",
    "app_mention_event",
    "block_actions_body",
    "dm_event",
    "event_body",
    "post",
    "post_event",
    "post_form",
    "sign",
    "slash_command_body",
    "url_verification_body",
    "view_submission_body",
]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

TEAM_ID = "T111"
TEAM_DOMAIN = "authguard-test"
APP_ID = "A111"
BOT_ID = "BBOT"
BOT_USER_ID = "UBOT"
VERIFICATION_TOKEN = "legacy-verification-token"  # deprecated field Slack still sends
DEFAULT_RESPONSE_URL = "http://127.0.0.1:9/response/unset"  # port 9 (discard): never answers

_seq = itertools.count(1)


def _unique() -> int:
    return next(_seq)


def _trigger_id() -> str:
    return f"4916855695380.{_unique()}.{hashlib.sha256(str(time.time()).encode()).hexdigest()[:32]}"


def _now_ts() -> str:
    return f"{time.time():.6f}"


# --------------------------------------------------------------------------- signing / posting
def sign(secret: str, body: str | bytes, timestamp: int | None = None) -> dict[str, str]:
    """Slack request signing v0: ``v0=`` + hex HMAC-SHA256(secret, ``v0:{ts}:{body}``)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    base = b"v0:" + str(ts).encode("ascii") + b":" + raw
    digest = hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def _check_local(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise ValueError(f"refusing to contact {url!r}: only http://127.0.0.1 is allowed")


# No proxies, whatever the environment says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(
    url: str,
    body: str | bytes,
    content_type: str,
    secret: str,
    timestamp: int | None = None,
    signature: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, str]:
    """POST ``body`` signed with ``secret`` to ``url`` (127.0.0.1 only); returns (status, text).

    ``timestamp`` overrides the signing time (e.g. ``int(time.time()) - 600`` for a stale
    request); ``signature`` replaces the computed ``X-Slack-Signature`` (forgery).
    ``headers`` adds/overrides headers, e.g. ``{"X-Slack-Retry-Num": "1"}``.
    """
    _check_local(url)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    hdrs = {"Content-Type": content_type, **sign(secret, raw, timestamp)}
    if signature is not None:
        hdrs["X-Slack-Signature"] = signature
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=raw, headers=hdrs, method="POST")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode("utf-8", "replace")


def post_form(url: str, body: str, secret: str, **kwargs: Any) -> tuple[int, str]:
    """:func:`post` for slash commands and interactivity payloads."""
    return post(url, body, FORM, secret, **kwargs)


def post_event(url: str, body: str, secret: str, **kwargs: Any) -> tuple[int, str]:
    """:func:`post` for Events API bodies."""
    return post(url, body, JSON, secret, **kwargs)


# --------------------------------------------------------------------------- body builders
def slash_command_body(
    text: str,
    user_id: str = "U1",
    user_name: str = "alice",
    channel_id: str = "C1",
    command: str = "/authguard",
    response_url: str = DEFAULT_RESPONSE_URL,
    *,
    channel_name: str = "ops",
    trigger_id: str | None = None,
) -> str:
    """Form-encoded body of a slash command request."""
    return urlencode(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": "directmessage" if channel_id.startswith("D") else channel_name,
            "user_id": user_id,
            "user_name": user_name,
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id or _trigger_id(),
        }
    )


def _payload_body(payload: dict) -> str:
    return "payload=" + quote(json.dumps(payload, separators=(",", ":")), safe="")


def _user(user_id: str, user_name: str) -> dict:
    return {"id": user_id, "username": user_name, "name": user_name, "team_id": TEAM_ID}


def block_actions_body(
    action_id: str,
    value: str,
    user_id: str = "U1",
    channel_id: str = "C1",
    message_ts: str = "1700000000.000100",
    response_url: str = DEFAULT_RESPONSE_URL,
    block_id: str = "b1",
    message_blocks: list | None = None,
    *,
    user_name: str = "alice",
    message_text: str = "",
    button_text: str = "Button",
    ephemeral: bool = False,
    state_values: dict | None = None,
) -> str:
    """``payload=``-encoded block_actions payload for a button click on a channel message.

    With ``ephemeral=True`` the ``message`` key is omitted, as Slack does for ephemeral
    messages (use ``container.message_ts``).
    """
    if message_blocks is None:
        message_blocks = [
            {
                "type": "actions",
                "block_id": block_id,
                "elements": [
                    {
                        "type": "button",
                        "action_id": action_id,
                        "value": value,
                        "text": {"type": "plain_text", "text": button_text},
                    }
                ],
            }
        ]
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id, user_name),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": ephemeral,
        },
        "trigger_id": _trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "directmessage" if channel_id[:1] == "D" else "ops"},
        "state": {"values": state_values or {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": button_text, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": _now_ts(),
            }
        ],
    }
    if not ephemeral:
        payload["message"] = {
            "type": "message",
            "subtype": "bot_message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "ts": message_ts,
            "text": message_text,
            "blocks": message_blocks,
        }
    return _payload_body(payload)


def view_submission_body(
    callback_id: str,
    values: dict,
    private_metadata: str = "",
    user_id: str = "U1",
    *,
    user_name: str = "alice",
    view_id: str = "V000001",
) -> str:
    """``payload=``-encoded view_submission payload.

    ``values`` is ``view.state.values``: ``{block_id: {action_id: {"type": ..., "value": ...}}}``.
    A plain string leaf is shorthand for ``{"type": "plain_text_input", "value": <str>}``.
    """
    state: dict[str, dict] = {}
    for block_id, actions in values.items():
        state[block_id] = {
            aid: ({"type": "plain_text_input", "value": v} if isinstance(v, str) else v)
            for aid, v in actions.items()
        }
    payload = {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": _user(user_id, user_name),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": _trigger_id(),
        "view": {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": "modal",
            "blocks": [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": f"{int(time.time())}.abcdef",
            "title": {"type": "plain_text", "text": "authguard"},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": {"type": "plain_text", "text": "Submit"},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": APP_ID,
            "external_id": "",
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return _payload_body(payload)


def event_body(
    event: dict, event_id: str = "Ev1", team_id: str = TEAM_ID, api_app_id: str = APP_ID
) -> str:
    """JSON ``event_callback`` envelope around ``event``."""
    return json.dumps(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": team_id,
            "api_app_id": api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{event_id}",
        }
    )


def _rich_text(text: str) -> list[dict]:
    return [
        {
            "type": "rich_text",
            "block_id": f"rt{_unique()}",
            "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
            ],
        }
    ]


def _message_event(kind: str, text: str, user: str, channel: str, ts: str | None) -> dict:
    ts = ts or _now_ts()
    return {
        "type": kind,
        "client_msg_id": f"00000000-0000-4000-8000-{_unique():012d}",
        "text": text,
        "user": user,
        "ts": ts,
        "blocks": _rich_text(text),
        "team": TEAM_ID,
        "channel": channel,
        "event_ts": ts,
    }


def app_mention_event(
    text: str, user: str = "U1", channel: str = "C1", ts: str | None = None
) -> dict:
    """``app_mention`` event; ``text`` should normally start with ``<@UBOT>``."""
    return _message_event("app_mention", text, user, channel, ts)


def dm_event(text: str, user: str = "U1", channel: str = "D1", ts: str | None = None) -> dict:
    """``message.im`` event (type ``message``, channel_type ``im``)."""
    return {**_message_event("message", text, user, channel, ts), "channel_type": "im"}


def app_home_opened_event(user: str, channel: str = "D1", tab: str = "home") -> dict:
    return {
        "type": "app_home_opened",
        "user": user,
        "channel": channel,
        "tab": tab,
        "event_ts": _now_ts(),
    }


def url_verification_body(challenge: str) -> str:
    return json.dumps(
        {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    )


# --------------------------------------------------------------------------- HTTP server
class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class BoltServer:
    """Serve a Bolt ``App`` via ``slack_bolt.adapter.wsgi.SlackRequestHandler`` on 127.0.0.1.

    with BoltServer(app) as srv:
        status, text = post_form(srv.url, slash_command_body("help"), "s3cret")
    """

    def __init__(self, app: Any, path: str = "/slack/events") -> None:
        from slack_bolt.adapter.wsgi import SlackRequestHandler

        self.path = path
        self._wsgi = SlackRequestHandler(app, path=path)
        self._server: WSGIServer | None = None
        self._stop: Callable[[], None] | None = None

    def start(self) -> BoltServer:
        if self._server is None:
            server = make_server(
                "127.0.0.1",
                0,
                self._wsgi,
                server_class=_ThreadingWSGIServer,
                handler_class=_QuietHandler,
            )
            self._server = server
            self._stop = serve_in_thread(server, f"BoltServer:{server.server_address[1]}")
        return self

    def stop(self) -> None:
        stop, self._stop, self._server = self._stop, None, None
        if stop is not None:
            stop()

    def __enter__(self) -> BoltServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("BoltServer is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"
