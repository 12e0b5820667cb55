"""A TCP relay between authguard and slapd (plain ``ldap://``) that reads just enough BER to
count the modify requests that reach the directory and to hold traffic at chosen moments.

>>> relay = LdapRelay(slapd.ldap_port).start()      # doctest: +SKIP
>>> relay.freeze_after_modify = True                # the next modify lands, then silence
>>> relay.frozen.wait(20)                           # doctest: +SKIP
>>> relay.modifies                                  # doctest: +SKIP
1

- ``modifies``: ModifyRequests forwarded to the directory (every process, every connection).
- ``freeze_after_modify``: once a ModifyResponse has been passed back to the client, nothing
  more is forwarded on any connection open at that moment (the directory "stops answering"
  right after the write landed); ``frozen`` is set. :meth:`thaw` lets new connections through.
- :meth:`hold` / :meth:`release`: answers from the directory wait until released (a slow
  directory that still answers).

Loopback only; every socket is closed by :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

HOST = "127.0.0.1"
MODIFY_REQUEST, MODIFY_RESPONSE = 0x66, 0x67  # [APPLICATION 6] / [APPLICATION 7], constructed


def _messages(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Pop complete LDAPMessages (``SEQUENCE { messageID, protocolOp, ... }``) off ``buffer``:
    ``(protocolOp tag, message bytes)``."""
    while len(buffer) >= 2:
        if buffer[0] != 0x30:
            raise ValueError(f"not an LDAPMessage: tag {buffer[0]:#x}")
        first = buffer[1]
        if first < 0x80:
            length, head = first, 2
        else:
            count = first & 0x7F
            if len(buffer) < 2 + count:
                return
            length, head = int.from_bytes(buffer[2 : 2 + count], "big"), 2 + count
        if len(buffer) < head + length:
            return
        message = bytes(buffer[: head + length])
        del buffer[: head + length]
        id_length = message[head + 1]  # messageID: INTEGER, short length
        yield message[head + 2 + id_length], message


class LdapRelay:
    """See the module docstring."""

    def __init__(self, upstream_port: int, upstream_host: str = HOST) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.modifies = 0
        self.freeze_after_modify = False
        self.frozen = threading.Event()
        self._open = threading.Event()  # set: answers flow; clear: held
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._frozen_sockets: set[int] = set()
        self._listener: socket.socket | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    def start(self) -> LdapRelay:
        listener = socket.create_server((HOST, 0))
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._open.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> LdapRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls --------------------------------------------------------------------------
    def thaw(self) -> None:
        """After a freeze: connections opened from now on are relayed normally."""
        with self._lock:
            self.freeze_after_modify = False
            self.frozen.clear()

    def hold(self) -> None:
        """Answers from the directory wait (requests still go through)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    # -- relaying --------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
                if self.frozen.is_set():  # opened during a freeze: accepted, never answered
                    self._frozen_sockets.add(id(client))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        pending = bytearray()
        client = source if upward else sink
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                pending += chunk
                for tag, message in _messages(pending):
                    if not upward:
                        self._open.wait()
                    with self._lock:
                        if id(client) in self._frozen_sockets:
                            continue  # swallowed: the directory "does not answer"
                        if upward and tag == MODIFY_REQUEST:
                            self.modifies += 1
                    sink.sendall(message)
                    if not upward and tag == MODIFY_RESPONSE:
                        self._after_modify()
        except (OSError, ValueError):
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _after_modify(self) -> None:
        with self._lock:
            if not self.freeze_after_modify:
                return
            for sock in self._sockets:
                self._frozen_sockets.add(id(sock))
            self.frozen.set()
