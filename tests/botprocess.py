"""authguard as a real operating-system process, for tests that kill, restart or double it.

>>> with BotProcess(serve_env(tmp_path, ldap_url, slapd, fake)) as bot:   # doctest: +SKIP
...     bot.command("audit")
...     bot.kill()                       # SIGKILL: a crash, nothing runs after it

``BotProcess`` runs ``python -m bot serve --http --host 127.0.0.1 --port 0`` (the ``authguard``
command) with only the settings it is given, learns its port from its own log line, and keeps
every line the process writes (stdout and stderr together) in ``lines``. ``run_cli`` runs any
other ``authguard`` command to completion. Only 127.0.0.1 is ever used; proxy variables are
dropped (slack_sdk would use them and ignore NO_PROXY).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests import slackreq
from tests.children import die_with_parent
from tests.fakeslack import FakeSlack
from tests.slapd_server import SlapdServer

REPO = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "bot"]
SIGNING_SECRET = "proc-signing-secret-7f3a9c"
BOT_TOKEN = "xoxb-proc-token-2b8e41d6"
CHANNEL = "C0SECURITY"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/slack/events")
_DROPPED = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment of a child: this one without AUTHGUARD_*/SLACK_*/proxy variables, the
    repository on PYTHONPATH, and ``settings``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AUTHGUARD_", "SLACK_")) and key not in _DROPPED
    }
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def serve_env(
    tmp: Path, ldap_url: str, slapd: SlapdServer, fake: FakeSlack, **extra: str
) -> dict[str, str]:
    """Settings for ``authguard serve`` over plain ``ldap_url`` (a test relay or slapd) as the
    service account, the database in ``tmp``, and the fake Slack."""
    env = {
        "AUTHGUARD_LDAP_URL": ldap_url,
        "AUTHGUARD_LDAP_BIND_DN": slapd.svc_dn,
        "AUTHGUARD_LDAP_PASSWORD": slapd.svc_password,
        "AUTHGUARD_LDAP_ALLOW_PLAINTEXT": "true",  # so a test relay can read the LDAP messages
        "AUTHGUARD_DB": str(tmp / "authguard.db"),
        "AUTHGUARD_APPROVERS": "U1,U2",
        "AUTHGUARD_AUDIT_SCHEDULE": "0 0 1 1 *",
        "AUTHGUARD_SUMMARY_SCHEDULE": "0 0 1 1 *",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "AUTHGUARD_SLACK_CHANNEL": CHANNEL,
        "AUTHGUARD_SLACK_API_URL": fake.base_url,
    }
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, launcher: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``authguard ARGS`` to completion (bounded), stdout and stderr captured.

    ``launcher`` is Python code run before the command in the same interpreter (a test may
    shorten a constant there); the command then runs as ``python -c``.
    """
    command = [*COMMAND, *args]
    if launcher is not None:
        command = [sys.executable, "-c", launcher + "\nfrom bot.cli import main\nmain()", *args]
    return subprocess.run(
        command,
        cwd=cwd or REPO,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class BotProcess:
    """``authguard serve --http`` in a child process on a free loopback port."""

    def __init__(self, env: dict[str, str], start_timeout: float = 60.0) -> None:
        self.env = env
        self.signing_secret = env.get("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(
            [*COMMAND, "serve", "--http", "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,  # never outlive the test run
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_for_port(start_timeout)
        self.url = f"http://127.0.0.1:{self.port}"
        self.events_url = self.url + "/slack/events"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    found = LISTENING.search(line)
                    if found:
                        return int(found.group(1))
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"authguard serve exited ({self.proc.returncode}):\n{self}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise RuntimeError(f"authguard serve did not start in time:\n{self}")
                self._seen.wait(min(left, 0.1))

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> str:
        """The first line matching ``pattern`` (a regular expression), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}:\n{self}")
                self._seen.wait(min(left, 0.1))

    @property
    def output(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.output[-6000:]

    # -- requests as Slack sends them ------------------------------------------------------
    def command(self, text: str, user_id: str = "U1", response_url: str = "", **kw: Any):
        body = slackreq.slash_command_body(
            text, user_id=user_id, response_url=response_url or slackreq.DEFAULT_RESPONSE_URL, **kw
        )
        return slackreq.post_form(self.events_url, body, self.signing_secret)

    def click(self, action_id: str, value: str, user_id: str = "U1", **kw: Any):
        body = slackreq.block_actions_body(action_id, value, user_id=user_id, **kw)
        return slackreq.post_form(self.events_url, body, self.signing_secret)

    # -- ending it -------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL, as a crash (the process gets no chance to clean up), and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 10 seconds; reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def __enter__(self) -> BotProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
