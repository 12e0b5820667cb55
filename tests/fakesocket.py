"""A fake Slack Socket Mode endpoint: a WebSocket server on 127.0.0.1 for tests.

Stdlib only. Slack's Socket Mode gives an app a WebSocket (its URL comes from
``apps.connections.open``) over which Slack sends envelopes (``events_api``, ``interactive``,
``slash_commands``) and the app acknowledges each with ``{"envelope_id": ...}``, within 3 s.
This server speaks enough RFC 6455 for slack_sdk's built-in Socket Mode client: the upgrade
handshake, text frames both ways (the client's are masked), ping/pong and close.

    with FakeSocketMode() as socket_mode:
        fake.socket_url = socket_mode.url          # what apps.connections.open answers
        ...start the app's SocketModeHandler...
        socket_mode.wait_connected()
        envelope_id = socket_mode.send("interactive", payload)
        ack = socket_mode.wait_ack(envelope_id)    # {"envelope_id": ..., "payload": ...?}
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
from typing import Any

HOST = "127.0.0.1"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def _frame(opcode: int, data: bytes) -> bytes:
    """One unmasked, final frame (servers never mask)."""
    head = bytes([0x80 | opcode])
    if len(data) < 126:
        head += bytes([len(data)])
    elif len(data) < 1 << 16:
        head += bytes([126]) + struct.pack("!H", len(data))
    else:
        head += bytes([127]) + struct.pack("!Q", len(data))
    return head + data


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> tuple[int, bytes]:
    first, second = _read_exactly(conn, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", _read_exactly(conn, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _read_exactly(conn, 8))[0]
    mask = _read_exactly(conn, 4) if second & 0x80 else b""
    data = _read_exactly(conn, length)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return first & 0x0F, data


class FakeSocketMode:
    """The WebSocket half of a fake Slack: envelopes out, acknowledgements in (recorded)."""

    def __init__(self) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._conns: list[socket.socket] = []
        self._acks: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.handshakes: list[str] = []  # the request line of each upgrade, e.g. "GET /link?..."
        self._stopped = False

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/link/?ticket=test-ticket&app_id=A111"

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> FakeSocketMode:
        threading.Thread(target=self._accept, name="fake-socket-accept", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            conns, self._conns = self._conns, []
        self._listener.close()
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._serve, args=(conn,), name="fake-socket-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not self._handshake(conn):
                return
            with self._lock:
                self._conns.append(conn)
                self._lock.notify_all()
            hello = {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A111"}}
            self._send(conn, json.dumps(hello))
            while True:
                opcode, data = _read_frame(conn)
                if opcode == PING:
                    with self._lock:
                        conn.sendall(_frame(PONG, data))
                elif opcode == CLOSE:
                    return
                elif opcode == TEXT:
                    message = json.loads(data.decode("utf-8"))
                    with self._lock:
                        self._acks[str(message.get("envelope_id"))] = message
                        self._lock.notify_all()
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def _handshake(self, conn: socket.socket) -> bool:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return False
            request += chunk
        lines = request.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        key = headers.get("sec-websocket-key", "").encode()
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()  # noqa: S324
        conn.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        with self._lock:
            self.handshakes.append(lines[0])
        return True

    def _send(self, conn: socket.socket, text: str) -> None:
        with self._lock:
            conn.sendall(_frame(TEXT, text.encode("utf-8")))

    # -- what tests use -------------------------------------------------------------------------
    def wait_connected(self, timeout: float = 15.0) -> None:
        """Wait until a client has connected (and was sent ``hello``)."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._conns, timeout):
                raise AssertionError("no Socket Mode client connected")

    def send(self, kind: str, payload: dict[str, Any], **extra: Any) -> str:
        """Send one envelope (``events_api``, ``interactive``, ``slash_commands``) to the newest
        connection, as Slack does; return its ``envelope_id``."""
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            **extra,
        }
        with self._lock:
            conn = self._conns[-1]
        self._send(conn, json.dumps(envelope))
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The client's acknowledgement of ``envelope_id`` (``{"envelope_id": ..., ...}``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while envelope_id not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no acknowledgement of {envelope_id}")
                self._lock.wait(left)
            return self._acks[envelope_id]
