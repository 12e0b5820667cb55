"""Child processes for tests: servers (slapd, samba) and the bot, started so they never outlive
the test run, logged to a file, and stopped with SIGTERM, then SIGKILL.

>>> class Server(ChildProcess):                                   # doctest: +SKIP
...     def start(self):
...         self.popen([find_tool("slapd") or "slapd", "-d", "0", ...])
>>> with Server(workdir / "slapd.log") as server:                 # doctest: +SKIP
...     server.start()
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn``: on Linux the child gets SIGTERM if the test process dies without
    stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_tool(name: str) -> str | None:
    """The full path of a program on PATH or in the sbin folders (root's tools), or ``None``."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class ChildProcess:
    """One server process at a time, its output appended to ``log_file``."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self._proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` (stdin closed, stdout and stderr to the log) as the child."""
        self._log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            **kwargs,
        )
        return self._proc

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s, and reap. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.reap()

    def reap(self) -> None:
        """Forget a child that has exited (and close its log)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    def read_log(self) -> str:
        """The end of the log, for error messages."""
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
