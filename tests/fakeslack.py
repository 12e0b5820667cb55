"""A small local fake of the Slack Web API (and of ``response_url`` endpoints) for tests.

Stdlib only. Binds to 127.0.0.1 on an ephemeral port and never talks to anything else.

    with FakeSlack() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        [call] = fake.calls("chat.postMessage")
        assert call.params["text"] == "hi"

Every request is recorded as a :class:`Call`. Unknown methods answer ``{"ok": true}``.
Faults can be injected per method with :meth:`FakeSlack.fail`.

Note: slack_sdk's ``WebClient``/``WebhookClient`` pick up ``HTTPS_PROXY``/``HTTP_PROXY`` from
the environment and do *not* honour ``NO_PROXY``; unset those variables in tests that use this
fake (e.g. ``monkeypatch.delenv("HTTPS_PROXY", raising=False)``).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.loopback import serve_in_thread

__all__ = ["BOT_ID", "BOT_USER_ID", "TEAM_ID", "Call", "FakeSlack"]

HOST = "127.0.0.1"
TEAM_ID = "T111"
TEAM_DOMAIN = "authguard-test"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
BOT_NAME = "authguard"
APP_ID = "A111"

# Params that Slack accepts as JSON strings in form-encoded requests.
_JSON_PARAMS = ("blocks", "attachments", "view")


class Headers(dict):
    """A ``dict`` of request headers with case-insensitive lookups (keys stored lower-case)."""

    def __init__(self, items=()):
        super().__init__()
        for k, v in dict(items).items():
            self[k] = v

    def __setitem__(self, key, value):
        super().__setitem__(str(key).lower(), value)

    def __getitem__(self, key):
        return super().__getitem__(str(key).lower())

    def __contains__(self, key):
        return super().__contains__(str(key).lower())

    def get(self, key, default=None):
        return super().get(str(key).lower(), default)


@dataclass(frozen=True)
class Call:
    """One recorded request.

    ``method`` is the Web API method (``"chat.postMessage"``) or ``"response_url:<name>"``.
    ``params`` merges query string and body (form, JSON or multipart); ``blocks``,
    ``attachments`` and ``view`` are JSON-decoded when they arrive as strings.
    ``headers`` has case-insensitive keys. ``time`` is ``time.time()`` at receipt.
    """

    method: str
    params: dict
    headers: dict
    time: float
    raw_body: bytes = field(default=b"", repr=False, compare=False)


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: int | None
    remaining: int | None  # None = forever


def _decode_json_params(params: dict) -> dict:
    for key in _JSON_PARAMS:
        value = params.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                params[key] = json.loads(value)
            except ValueError:
                pass
    return params


def _parse_body(content_type: str, body: bytes) -> dict:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return {}
    if ctype == "application/json":
        data = json.loads(body.decode("utf-8"))
        return data if isinstance(data, dict) else {"_json": data}
    if ctype == "multipart/form-data":
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        out: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is None:
                out[name] = payload.decode("utf-8", "replace")
            else:
                out[name] = payload
        return out
    # Slack's default and WebClient's default: application/x-www-form-urlencoded
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


class FakeSlack:
    """Fake Slack Web API on ``http://127.0.0.1:<port>/api/``.

    Configuration (plain attributes, change any time):

    * ``usergroups``: ``{"S123": ["U1", "U2"]}`` for ``usergroups.users.list``.
    * ``users``: ``{"U1": "alice"}`` or ``{"U1": {"name": "alice", "real_name": "Alice"}}``
      for ``users.info`` (unknown users get ``name == real_name == id``).
    * ``channels``: ``{"C1": "ops"}`` or ``{"C1": {...extra fields}}`` for ``conversations.info``.
    * ``tokens``: ``None`` (any bearer token accepted) or a set of accepted tokens.
    """

    def __init__(self) -> None:
        self.usergroups: dict[str, list[str]] = {}
        self.users: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.tokens: set[str] | None = None
        # what apps.connections.open answers (Socket Mode): a tests.fakesocket.FakeSocketMode url
        self.socket_url: str | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._messages: dict[str, dict] = {}
        self._ts_counter = itertools.count(1)
        self._view_counter = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._stop: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeSlack:
        if self._server is not None:
            return self
        fake = self

        class _Handler(_RequestHandler):
            pass

        _Handler.fake = fake
        server = ThreadingHTTPServer((HOST, 0), _Handler)
        server.daemon_threads = True
        self._server = server
        self._stop = serve_in_thread(server, f"FakeSlack:{server.server_address[1]}")
        return self

    def stop(self) -> None:
        stop, self._stop, self._server = self._stop, None, None
        if stop is not None:
            stop()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """``WebClient(base_url=...)`` value; ends with ``/`` like ``https://slack.com/api/``."""
        return f"{self.url}/api/"

    def response_url(self, name: str = "r1") -> str:
        """A response URL; POSTs to it are recorded as method ``"response_url:<name>"``."""
        return f"{self.url}/response/{name}"

    # ------------------------------------------------------------------ faults
    def fail(
        self,
        method: str,
        status: int = 200,
        times: int | None = 1,
        retry_after: int | None = None,
        error: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail (``times=None``: every call).

        * ``fail(m, status=429, retry_after=1)`` -> HTTP 429, ``Retry-After: 1``,
          ``{"ok": false, "error": "ratelimited"}``
        * ``fail(m, status=500, times=2)`` -> HTTP 500 ``{"ok": false, "error": "internal_error"}``
        * ``fail(m, error="channel_not_found")`` -> HTTP 200 ``{"ok": false, "error": ...}``

        ``method`` may also be ``"response_url:<name>"``. Faults queue up in order.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        if error is None:
            error = {200: "fatal_error", 429: "ratelimited"}.get(status, "internal_error")
        with self._lock:
            self._faults.setdefault(method, []).append(_Fault(status, error, retry_after, times))

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(method)
            if not queue:
                return None
            fault = queue[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.pop(0)
            return fault

    # ------------------------------------------------------------------ inspection
    def calls(self, method: str | None = None) -> list[Call]:
        """Recorded calls, oldest first. ``method="response_url"`` matches every response URL."""
        with self._lock:
            return [c for c in self._calls if _matches(c.method, method)]

    def count(self, method: str | None = None) -> int:
        return len(self.calls(method))

    def wait_for(self, method: str, count: int = 1, timeout: float = 5) -> list[Call]:
        """Block until at least ``count`` calls of ``method`` arrived; returns them.

        Raises ``AssertionError`` (listing what was seen) on timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self._calls if _matches(c.method, method)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [c.method for c in self._calls]
                    raise AssertionError(
                        f"expected {count} call(s) of {method!r} within {timeout}s, "
                        f"got {len(found)}; calls seen: {seen}"
                    )
                self._cond.wait(min(left, 0.05))

    def message(self, ts: str) -> dict | None:
        """Current state of a message posted via chat.postMessage (after chat.update calls)."""
        with self._lock:
            msg = self._messages.get(ts)
            return json.loads(json.dumps(msg)) if msg is not None else None

    def reset(self) -> None:
        """Forget calls, pending faults and messages (config and the ts counter are kept)."""
        with self._lock:
            self._calls.clear()
            self._faults.clear()
            self._messages.clear()

    # ------------------------------------------------------------------ internals
    def _record(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _next_ts(self) -> str:
        with self._lock:
            n = next(self._ts_counter) * 100
        return f"{1700000000 + n // 1_000_000}.{n % 1_000_000:06d}"

    def _next_view_id(self) -> str:
        with self._lock:
            return f"V{next(self._view_counter):06d}"

    def _authorized(self, call: Call) -> bool:
        auth = call.headers.get("authorization", "") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        token = token or str(call.params.get("token") or "")
        if not token:
            return False
        return self.tokens is None or token in self.tokens

    def _api(self, call: Call) -> dict:
        handler = getattr(self, "_m_" + call.method.replace(".", "_"), None)
        if handler is None:
            return {"ok": True}
        return handler(call.params)

    # Web API methods --------------------------------------------------------
    def _m_apps_connections_open(self, p: dict) -> dict:
        if self.socket_url is None:
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"ok": True, "url": self.socket_url}

    def _m_auth_test(self, p: dict) -> dict:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_DOMAIN,
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_chat_postMessage(self, p: dict) -> dict:
        channel = p.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "ts": ts,
            "text": p.get("text", ""),
            "blocks": p.get("blocks") or [],
        }
        if p.get("attachments"):
            message["attachments"] = p["attachments"]
        if p.get("thread_ts"):
            message["thread_ts"] = str(p["thread_ts"])
        with self._lock:
            self._messages[ts] = {"channel": channel, **message}
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, p: dict) -> dict:
        channel, ts = p.get("channel"), p.get("ts")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not ts:
            return {"ok": False, "error": "message_not_found"}
        ts = str(ts)
        with self._lock:
            msg = self._messages.get(ts)
            if msg is not None:
                for key in ("text", "blocks", "attachments"):
                    if key in p:  # omitted blocks are kept, [] clears them
                        msg[key] = p[key]
                text = msg.get("text", "")
                blocks = msg.get("blocks", [])
            else:
                text, blocks = p.get("text", ""), p.get("blocks", [])
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": text,
            "message": {
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": text,
                "blocks": blocks,
            },
        }

    def _m_chat_postEphemeral(self, p: dict) -> dict:
        if not p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_chat_delete(self, p: dict) -> dict:
        with self._lock:
            self._messages.pop(str(p.get("ts")), None)
        return {"ok": True, "channel": p.get("channel"), "ts": p.get("ts")}

    def _view_response(self, p: dict, view_id: str | None = None) -> dict:
        view = p.get("view")
        if not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        vid = view_id or self._next_view_id()
        out = {
            "id": vid,
            "team_id": TEAM_ID,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{vid}",
            "private_metadata": "",
            "callback_id": "",
            "external_id": "",
            "root_view_id": vid,
            "previous_view_id": None,
            **view,
        }
        out["id"] = vid
        return {"ok": True, "view": out}

    def _m_views_publish(self, p: dict) -> dict:
        if not p.get("user_id"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._view_response(p)

    def _m_views_open(self, p: dict) -> dict:
        if not p.get("trigger_id") and not p.get("interactivity_pointer"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._view_response(p)

    def _m_views_push(self, p: dict) -> dict:
        return self._m_views_open(p)

    def _m_views_update(self, p: dict) -> dict:
        return self._view_response(p, view_id=p.get("view_id") or None)

    def _m_usergroups_users_list(self, p: dict) -> dict:
        group = p.get("usergroup")
        with self._lock:
            members = self.usergroups.get(group) if group else None
        if members is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(members)}

    def _m_users_info(self, p: dict) -> dict:
        uid = p.get("user")
        if not uid:
            return {"ok": False, "error": "user_not_found"}
        with self._lock:
            info = self.users.get(uid)
        extra = info if isinstance(info, dict) else {}
        name = extra.get("name") or (info if isinstance(info, str) else uid)
        real_name = extra.get("real_name") or name
        user = {
            "id": uid,
            "team_id": TEAM_ID,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "is_bot": False,
            "is_admin": False,
            "tz": "UTC",
            "profile": {"real_name": real_name, "display_name": name},
        }
        user.update({k: v for k, v in extra.items() if k not in ("name", "real_name")})
        return {"ok": True, "user": user}

    def _m_conversations_info(self, p: dict) -> dict:
        cid = p.get("channel")
        if not cid:
            return {"ok": False, "error": "channel_not_found"}
        with self._lock:
            info = self.channels.get(cid)
        extra = info if isinstance(info, dict) else {}
        name = extra.get("name") or (info if isinstance(info, str) else cid.lower())
        is_im = cid.startswith("D")
        channel = {
            "id": cid,
            "name": name,
            "is_channel": cid.startswith("C"),
            "is_group": cid.startswith("G"),
            "is_im": is_im,
            "is_private": cid.startswith(("G", "D")),
            "is_member": True,
            "is_archived": False,
            "context_team_id": TEAM_ID,
        }
        if is_im:
            channel["user"] = extra.get("user", "U1")
        channel.update({k: v for k, v in extra.items() if k != "name"})
        return {"ok": True, "channel": channel}

    def _m_conversations_open(self, p: dict) -> dict:
        users = str(p.get("users") or "").split(",")
        if p.get("channel"):
            return {"ok": True, "channel": {"id": p["channel"]}}
        if not users[0]:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + users[0].lstrip("UW")}}


def _matches(call_method: str, wanted: str | None) -> bool:
    if wanted is None or call_method == wanted:
        return True
    return wanted == "response_url" and call_method.startswith("response_url:")


class _RequestHandler(BaseHTTPRequestHandler):
    fake: FakeSlack
    server_version = "FakeSlack/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: dict, extra: dict | None = None) -> None:
        body = json.dumps(data).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _handle(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = Headers(self.headers.items())
        params: dict[str, Any] = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            params.update(_parse_body(self.headers.get("Content-Type", ""), raw))
        except (ValueError, UnicodeDecodeError):
            params["_unparsed"] = raw.decode("utf-8", "replace")
        _decode_json_params(params)

        path = unquote(split.path)
        if path.startswith("/api/") and len(path) > len("/api/"):
            method = path[len("/api/") :]
            kind = "api"
        elif path.startswith("/response/") and len(path) > len("/response/"):
            method = "response_url:" + path[len("/response/") :]
            kind = "response"
        else:
            self._send(404, b"not found", "text/plain")
            return

        call = Call(method=method, params=params, headers=headers, time=time.time(), raw_body=raw)
        fake._record(call)

        fault = fake._take_fault(method)
        if fault is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            if kind == "response" and fault.status != 200:
                self._send(fault.status, (fault.error or "error").encode(), "text/plain", extra)
            else:
                self._send_json(fault.status, {"ok": False, "error": fault.error}, extra)
            return

        if kind == "response":
            if "_unparsed" in params or not raw:
                self._send(400, b"invalid_payload", "text/plain")
            else:
                self._send(200, b"ok", "text/html")
            return

        if not fake._authorized(call):
            self._send_json(200, {"ok": False, "error": "invalid_auth"})
            return
        self._send_json(200, fake._api(call))
