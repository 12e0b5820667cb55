"""Send a burst of signed button clicks at once and time each one until its HTTP answer.

Runs in its own process (as Slack is), so the client does not share the bot's interpreter.
``benchmarks/run.py`` starts it with JSON in ``AUTHGUARD_BENCH_CLICKS``::

    {"url": "http://127.0.0.1:PORT/slack/events", "secret": "...",
     "clicks": [{"action_id": "recheck", "value": "...", "channel": "C...", "ts": "...",
                 "response_url": "http://127.0.0.1:..."}]}

Every request is built and signed (as Slack signs it) before the burst. Then one thread opens
all the connections at once without blocking, writes each request as soon as its connection is
up and reads the answers as they come (``selectors``), so the client adds next to nothing to
what it measures: the time from starting to connect to the end of the answer. Prints
``[[status, seconds], ...]`` as JSON (status 0: no answer). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import slackreq  # noqa: E402

TIMEOUT = 30.0


def _request(path: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def main() -> int:
    config = json.loads(os.environ["AUTHGUARD_BENCH_CLICKS"])
    url = urlsplit(config["url"])
    if url.scheme != "http" or url.hostname != "127.0.0.1" or not url.port:
        raise SystemExit(f"refusing to contact {config['url']!r}: only http://127.0.0.1:PORT")
    requests = []
    for click in config["clicks"]:
        body = slackreq.block_actions_body(
            click["action_id"],
            click["value"],
            user_id=click.get("user_id", "U1"),
            channel_id=click["channel"],
            message_ts=click["ts"],
            response_url=click["response_url"],
        ).encode()
        headers = {"Content-Type": slackreq.FORM, **slackreq.sign(config["secret"], body)}
        requests.append(_request(url.path, url.port, body, headers))

    selector = selectors.DefaultSelector()
    began: list[float] = [0.0] * len(requests)
    results: list[list[float] | None] = [None] * len(requests)
    answers = [bytearray() for _ in requests]
    for index in range(len(requests)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        began[index] = time.perf_counter()
        sock.connect_ex(("127.0.0.1", url.port))
        selector.register(sock, selectors.EVENT_WRITE, index)
    pending = len(requests)
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1.0):
            sock, index = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                try:
                    sock.sendall(requests[index])  # small: fits the socket buffer at once
                except OSError:  # refused or reset: no answer
                    results[index] = [0, time.perf_counter() - began[index]]
                    selector.unregister(sock)
                    sock.close()
                    pending -= 1
                    continue
                selector.modify(sock, selectors.EVENT_READ, index)
                continue
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                answers[index] += chunk
                continue
            results[index] = [_status(bytes(answers[index])), time.perf_counter() - began[index]]
            selector.unregister(sock)
            sock.close()
            pending -= 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    print(json.dumps([r if r is not None else [0, TIMEOUT] for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
