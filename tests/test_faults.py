"""Faults: the directory dies mid-audit or never answers, Slack fails for a while, the database
is locked by another process or its disk is full.

The bot runs for real (``tests.botharness.BotHarness``: the Runtime over HTTP, a fake Slack, a
private slapd); the command line runs as a child process. Every wait is bounded; nothing here
asserts how long something took.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator

from bot.directory import AUDIT_FILTER, SUBTREE, connect
from storage import open_store
from tests.botharness import CHANNEL, BotHarness
from tests.botprocess import REPO, child_env, run_cli
from tests.children import die_with_parent
from tests.fakeslack import FakeSlack
from tests.forest import ServerSpec
from tests.slapd_server import SlapdServer, private_slapd

WARN = (
    ServerSpec("EXA", smtp_flags=[7]),  # fix: 7 -> 5
    ServerSpec("EXB", smtp_flags=[3]),
    ServerSpec("EXC", smtp_flags=[6]),
)
# enough clean servers that the audit's search takes several pages (500 entries a page)
CLEAN = tuple(ServerSpec(f"OK{n:04d}", smtp_flags=[1], computer=False) for n in range(600))


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """A private slapd with three warning servers among 600 clean ones (about 1,200 entries)."""
    with private_slapd(tmp_path_factory, "faults-slapd", WARN + CLEAN) as server:
        yield server


@pytest.fixture
def bot(tmp_path, directory):
    directory.reset([directory.forest])
    with BotHarness(tmp_path, directory, approvers=("U1",)) as harness:
        yield harness


def top_level(fake: FakeSlack) -> list[dict]:
    """Top-level messages posted to the warnings channel (params of each accepted call)."""
    return [
        c.params
        for c in fake.calls("chat.postMessage")
        if c.params.get("channel") == CHANNEL and not c.params.get("thread_ts")
    ]


def delivered_warnings(fake: FakeSlack) -> dict[str, int]:
    """Warning messages that exist in (fake) Slack, counted by server."""
    counts: dict[str, int] = {}
    with fake._lock:  # the fake keeps every message it accepted, by ts
        messages = list(fake._messages.values())
    for message in messages:
        head = (message.get("blocks") or [{}])[0]
        title = str((head.get("text") or {}).get("text", ""))
        if not message.get("thread_ts") and "Basic authentication" in title and " on " in title:
            server = title.rsplit(" on ", 1)[1]  # "⚠️ Basic authentication enabled on EXA"
            counts[server] = counts.get(server, 0) + 1
    return counts


def thread_replies(fake: FakeSlack, ts: str) -> list[str]:
    with fake._lock:
        messages = list(fake._messages.values())
    return [m["text"] for m in messages if m.get("thread_ts") == ts]


def heal(fake: FakeSlack) -> None:
    """Slack recovers: every queued fault is dropped."""
    with fake._lock:
        fake._faults.clear()


# -- the directory goes down in the middle of a paged audit -----------------------------------


def dies_after_first_page(settings, directory: SlapdServer):
    """An opener whose audit search stops slapd once the first page has arrived."""

    def open_directory():
        opened = connect(settings)
        search = opened.search

        def search_then_die(base, search_filter, attributes, scope=SUBTREE):
            for count, found in enumerate(search(base, search_filter, attributes, scope)):
                if search_filter == AUDIT_FILTER and count == 1:
                    directory.stop()  # the first page (500 entries) is already here
                yield found

        opened.search = search_then_die
        return opened

    return open_directory


def test_directory_down_mid_audit_is_a_failed_run_and_clears_nothing(bot, directory):
    runtime, fake = bot.runtime, bot.fake
    runtime.scheduled_audit()
    assert delivered_warnings(fake) == {"EXA": 1, "EXB": 1, "EXC": 1}
    posted, updates = len(top_level(fake)), fake.count("chat.update")

    healthy = runtime.core.open_directory
    runtime.core.open_directory = dies_after_first_page(bot.settings, directory)
    try:
        runtime.scheduled_audit()  # what the scheduler runs at the cron time
    finally:
        runtime.core.open_directory = healthy
        if not directory.running:
            directory.start()
    run = runtime.store.db["audit_runs"].get(2)
    assert run["status"] == "failed", run
    assert run["total"] >= 100, "the directory went down before the first page was read"
    assert run["error"]

    # nothing said fixed or clear: no warning touched, the failure said loudly
    assert fake.count("chat.update") == updates
    assert not any("Resolved" in str(c.params.get("text")) for c in fake.calls("chat.postMessage"))
    failure = top_level(fake)[posted:]
    assert len(failure) == 1 and "FAILED" in json.dumps(failure[0]["blocks"])
    states = {w["server"]: w["state"] for w in runtime.store.db["warning_messages"].rows}
    assert states == {"EXA": "open", "EXB": "open", "EXC": "open"}
    runtime.post_summary()
    summary = top_level(fake)[-1]
    assert "FAILED" in summary["text"] and "All clear" not in json.dumps(summary["blocks"])

    # the next scheduled audit, the way the scheduler fires it, runs normally
    runtime.scheduler.get_job("audit").func()
    latest = runtime.store.db["audit_runs"].get(3)
    assert (latest["status"], latest["trigger"], latest["warning"]) == ("succeeded", "schedule", 3)
    assert latest["total"] == len(WARN + CLEAN) > run["total"]  # all of it, this time
    assert fake.count("chat.update") == updates  # unchanged findings: nothing to redraw
    assert delivered_warnings(fake) == {"EXA": 1, "EXB": 1, "EXC": 1}


# -- the directory accepts connections and never answers --------------------------------------


class Silent:
    """A TCP server on loopback that accepts every connection and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent():
    server = Silent()
    yield server
    server.close()


def test_a_silent_directory_times_out_and_the_bot_keeps_answering(bot, silent):
    runtime, fake = bot.runtime, bot.fake
    runtime.core.audit(trigger="chat")  # a stored state to answer questions from
    slow = replace(bot.settings, ldap_url=f"ldaps://127.0.0.1:{silent.port}", ldap_timeout=3.0)
    runtime.core.open_directory = lambda: connect(slow)

    status, _ = bot.command("audit", response_url=fake.response_url("audit"))
    assert status == 200
    assert silent.accepted.wait(10), "the audit never tried the directory"

    # while the audit waits for the directory, people still get answers
    status, text = bot.command("help")
    assert status == 200 and "/authguard status EX01" in text
    bot.command("status EXA", response_url=fake.response_url("status"))
    reply = fake.wait_for("response_url:status", timeout=10)[-1].params
    assert "Status of EXA" in json.dumps(reply["blocks"])
    assert fake.count("response_url:audit") == 0, "the audit was not waiting any more"

    result = fake.wait_for("response_url:audit", timeout=60)[-1].params
    shown = json.dumps(result["blocks"])
    assert "FAILED" in shown and "did not answer within 3 s" in shown
    run = runtime.store.db["audit_runs"].get(2)
    assert run["status"] == "failed" and "AUTHGUARD_LDAP_TIMEOUT" in run["error"]


def test_cli_audit_against_a_silent_directory_stops_at_the_configured_timeout(tmp_path, silent):
    env = {
        "AUTHGUARD_LDAP_URL": f"ldap://127.0.0.1:{silent.port}",
        "AUTHGUARD_LDAP_TIMEOUT": "1",
        "AUTHGUARD_DB": str(tmp_path / "a.db"),
    }
    proc = run_cli(env, "audit")
    assert proc.returncode == 2, proc.stderr
    assert "did not answer within 1 s (AUTHGUARD_LDAP_TIMEOUT)" in proc.stderr
    assert "Traceback" not in proc.stderr
    store = open_store(env["AUTHGUARD_DB"])
    try:
        assert [r["status"] for r in store.db["audit_runs"].rows] == ["failed"]
    finally:
        store.close()


# -- Slack answers 429 and 500 for a while ----------------------------------------------------


def quick_retries(bot) -> None:
    """The client retries once (not five times with back-off), so the outage outlasts the
    retries quickly; what is tested is authguard's own keeping and re-sending."""
    bot.runtime.client.retry_handlers = [
        RateLimitErrorRetryHandler(max_retry_count=1),
        ServerErrorRetryHandler(
            max_retry_count=1, interval_calculator=FixedValueRetryIntervalCalculator(0.0)
        ),
    ]


def test_a_slack_outage_loses_no_warning_and_no_job_outcome(bot, directory):
    runtime, fake = bot.runtime, bot.fake
    quick_retries(bot)
    retry = runtime.scheduler.get_job("retry").func  # the retry job, as the scheduler runs it

    # warnings while Slack is rate limiting and failing
    fake.fail("chat.postMessage", status=429, retry_after=0, times=2)
    fake.fail("chat.postMessage", status=500, times=None)
    runtime.core.audit(trigger="chat")
    assert delivered_warnings(fake) == {}
    states = {w["server"]: w["state"] for w in runtime.store.db["warning_messages"].rows}
    assert states == {"EXA": "pending", "EXB": "pending", "EXC": "pending"}
    retry()  # still down: kept
    assert delivered_warnings(fake) == {}
    heal(fake)
    retry()
    assert delivered_warnings(fake) == {"EXA": 1, "EXB": 1, "EXC": 1}
    assert retry() is None and delivered_warnings(fake) == {"EXA": 1, "EXB": 1, "EXC": 1}

    # an approval whose outcome is due while Slack is down again
    kept = runtime.store.db["warning_messages"].get("EXA")
    value = next(
        element["value"]
        for block in fake.message(kept["ts"])["blocks"]
        for element in block.get("elements", [])
        if element.get("action_id") == "approve_fix"
    )
    finished = threading.Event()
    refresh = runtime.notifier.refresh

    def refresh_then_note(server: str) -> None:  # the click's last step: redraw the warning
        try:
            refresh(server)
        finally:
            finished.set()

    runtime.notifier.refresh = refresh_then_note
    for method in ("chat.postMessage", "chat.update"):
        fake.fail(method, status=429, retry_after=0, times=2)
        fake.fail(method, status=500, times=None)
    status, _ = bot.click("approve_fix", value, user_id="U1")
    assert status == 200
    assert finished.wait(30), "the click was not handled"
    [job] = list(runtime.store.db["jobs"].rows)
    assert job["state"] == "verified"
    assert thread_replies(fake, kept["ts"]) == []  # nothing got through ...
    assert "approve_fix" in json.dumps(fake.message(kept["ts"])["blocks"])

    assert runtime.post_summary() is None  # the daily summary falls into the outage too
    retry()  # ... and while Slack is still down, nothing is dropped either
    heal(fake)
    retry()
    with fake._lock:
        delivered = [m for m in fake._messages.values() if "summary" in str(m.get("text"))]
    assert len(delivered) == 1  # the summary too, once
    replies = thread_replies(fake, kept["ts"])
    outcome = [r for r in replies if "Approved by alice" in r]
    assert len(outcome) == 1, replies  # the job outcome, delivered once
    assert "verified" in outcome[0]
    shown = json.dumps(fake.message(kept["ts"])["blocks"])
    assert "Fixed and verified" in shown and "approve_fix" not in shown
    assert retry() is None  # nothing left
    assert thread_replies(fake, kept["ts"]) == replies  # and nothing sent twice
    assert delivered_warnings(fake) == {"EXA": 1, "EXB": 1, "EXC": 1}


# -- the database: locked by another process, or on a full disk -------------------------------

# run before the command in the child: wait half a second for a lock instead of fifteen
SHORT_WAIT = "import storage.db\nstorage.db.BUSY_TIMEOUT_SECONDS = 0.5"
# another process holds the write lock until its stdin closes
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""
# a full disk without privileges: no connection may grow the database file
FULL_DISK = """
import storage.db
_connect = storage.db._connect
def _no_room(path):
    db = _connect(path)
    pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
    db.conn.execute(f"PRAGMA max_page_count = {pages}")
    return db
storage.db._connect = _no_room
"""


def statuses(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("select status from audit_runs order by id")]
    finally:
        conn.close()


def assert_intact(db: Path, env: dict[str, str]) -> None:
    """Not corrupted, and the audit log's hash chain verifies (``authguard log verify``)."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    verified = run_cli(env, "log", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit log intact" in verified.stdout


def assert_clear_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("authguard: error: "), proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr


def test_a_database_locked_by_another_process_is_a_clear_error(tmp_path):
    db = tmp_path / "authguard.db"
    env = {"AUTHGUARD_DB": str(db)}
    assert run_cli(env, "audit", "--sample").returncode == 1  # findings
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        cwd=REPO,
        env=child_env({}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        refused = run_cli(env, "audit", "--sample", launcher=SHORT_WAIT)
        # reading needs no write lock: the chain verifies even while the lock is held
        meanwhile = run_cli(env, "log", "verify", launcher=SHORT_WAIT)
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(timeout=30)
    assert_clear_error(refused, f"the database {db} is locked by another process")
    assert refused.stdout == ""
    assert meanwhile.returncode == 0, meanwhile.stderr
    assert statuses(db) == ["succeeded"]  # the refused audit left nothing behind
    assert_intact(db, env)
    assert run_cli(env, "audit", "--sample").returncode == 1
    assert statuses(db) == ["succeeded", "succeeded"]


@contextlib.contextmanager
def small_disk(path: Path):
    """A 1 MiB tmpfs at ``path`` (root only); ``None`` when it cannot be mounted."""
    path.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk but ``leave`` bytes; return the filler file (delete it to free the space)."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        db = (disk or tmp_path) / "authguard.db"
        env = {"AUTHGUARD_DB": str(db)}
        assert run_cli(env, "audit", "--sample").returncode == 1
        if disk is None:  # no tmpfs here: SQLite itself refuses to grow the file
            full = run_cli(env, "audit", "--sample", launcher=FULL_DISK)
            assert_clear_error(full, f"cannot write the database {db}: the disk is full")
        else:
            # completely full: nothing can be written, not even the run's first row
            filler = fill(disk, 0)
            full = run_cli(env, "audit", "--sample")
            filler.unlink()
            assert_clear_error(full, f"cannot write the database {db}: the disk is full")
            # full in the middle of the audit: the targets cannot be stored
            filler = fill(disk, 48 * 1024)
            midway = run_cli(env, "audit", "--sample")
            filler.unlink()
            assert_clear_error(midway, f"cannot write the database {db}: the disk is full")
        runs = statuses(db)
        assert runs[0] == "succeeded" and "succeeded" not in runs[1:]  # never reported clean
        assert_intact(db, env)
        assert run_cli(env, "audit", "--sample").returncode == 1  # room again: it works
        assert statuses(db)[-1] == "succeeded"
