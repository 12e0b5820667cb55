"""Two authguard processes on one database, one directory and one Slack.

Two ``authguard serve --http`` children (each its own port) share the SQLite database, reach
slapd through :class:`tests.ldaprelay.LdapRelay` (which counts every modify either sends, and
can hold the directory's answers to keep an audit running), and post to one fake Slack:

- one audit at a time across both: the database lease; the second asker gets the first's result;
- the same approve click handled by both at once: exactly one job and one LDAP write;
- the scheduled jobs, fired in two processes the way the scheduler fires them: each firing runs
  once (``bot.scheduler.once_per_firing`` claims it in the database).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from storage import open_store
from storage.audit_log import verify_log
from tests.botprocess import CHANNEL, REPO, BotProcess, child_env, serve_env
from tests.children import die_with_parent
from tests.fakeslack import FakeSlack
from tests.forest import ServerSpec, vserver_dn
from tests.helpers import read_flags, rows, wait_until
from tests.ldaprelay import LdapRelay
from tests.slapd_server import private_slapd

SERVERS = (
    ServerSpec("EXA", smtp_flags=[7]),  # fix: 7 -> 5
    ServerSpec("EXB", smtp_flags=[6]),
    ServerSpec("EXC", smtp_flags=[1]),  # clean
)
SMTP = "msExchAuthenticationFlags"

# What the scheduler does in each process when a cron job fires: the job wrapped by
# once_per_firing. The worker builds the same Runtime as `authguard serve` and fires the audit
# and the summary when the test says "go" on stdin.
WORKER = """
import sys
from bot.config import load_settings
from handlers.runtime import Runtime

runtime = Runtime(load_settings())
print("ready", flush=True)
sys.stdin.readline()
for name in ("audit", "summary"):
    runtime.scheduler.get_job(name).func()
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    with private_slapd(tmp_path_factory, "two-processes-slapd", SERVERS) as server:
        yield server


@pytest.fixture
def fake():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def relay(directory):
    directory.reset([directory.forest])
    with LdapRelay(directory.ldap_port) as relay:
        yield relay


def top_level_posts(fake: FakeSlack) -> list[dict]:
    return [
        c.params
        for c in fake.calls("chat.postMessage")
        if c.params.get("channel") == CHANNEL and not c.params.get("thread_ts")
    ]


def warnings_by_server(fake: FakeSlack) -> dict[str, int]:
    counts: dict[str, int] = {}
    for post in top_level_posts(fake):
        text = str(post.get("text", ""))
        if "SMTP target(s)" in text:
            server = text.split(":", 1)[0]
            counts[server] = counts.get(server, 0) + 1
    return counts


def button_value(fake: FakeSlack, db: str, server: str, action_id: str) -> str:
    [kept] = rows(db, "select ts from warning_messages where server = ?", server)
    for block in fake.message(kept["ts"])["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} button on the warning of {server}")


@pytest.fixture
def pair(tmp_path, directory, relay, fake):
    env = serve_env(tmp_path, relay.url, directory, fake)
    first = BotProcess(env)
    try:
        second = BotProcess(env)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second, env["AUTHGUARD_DB"]
    finally:
        second.stop()
        first.stop()


def test_one_audit_at_a_time_and_one_remediation_per_click(pair, directory, relay, fake):
    first, second, db = pair

    # -- one audit at a time: the second process joins the first one's run ---------------
    relay.hold()  # the directory is slow: the first audit stays running
    try:
        status, _ = first.command("audit", response_url=fake.response_url("first"))
        assert status == 200
        wait_until(
            lambda: rows(db, "select id from audit_runs where status = 'running'"),
            what="the first audit is running",
        )
        status, ack = second.command("audit", response_url=fake.response_url("second"))
        assert status == 200 and "already running" in ack
        time.sleep(0.5)  # let the second process's request reach the lease while it is held
    finally:
        relay.release()
    one = fake.wait_for("response_url:first", timeout=30)[-1].params["text"]
    other = fake.wait_for("response_url:second", timeout=30)[-1].params["text"]
    runs = rows(db, "select * from audit_runs where scope = 'full' order by id")
    assert {r["status"] for r in runs} == {"succeeded"}, runs
    for earlier, later in zip(runs, runs[1:], strict=False):  # never two at once
        assert later["started_at"] >= earlier["finished_at"], runs
    assert f"Audit #{runs[0]['id']} finished" in one
    if len(runs) == 1:  # the usual case: the second asker waited for the first one's run
        assert f"Audit #{runs[0]['id']} finished" in other
    assert warnings_by_server(fake) == {"EXA": 1, "EXB": 1}  # posted by one process only

    # -- the same click reaching both processes at once: one job, one write -----------------
    value = button_value(fake, db, "EXA", "approve_fix")
    barrier = threading.Barrier(2)
    answers: list[int] = []

    def click(process: BotProcess, user: str) -> None:
        barrier.wait()
        answers.append(process.click("approve_fix", value, user_id=user)[0])

    threads = [
        threading.Thread(target=click, args=(first, "U1")),
        threading.Thread(target=click, args=(second, "U2")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [200, 200]
    wait_until(
        lambda: rows(db, "select state from jobs where state = 'verified'"),
        what="the job is verified",
    )
    # the other process answered the second click (already approved / running / done)
    wait_until(lambda: fake.count("chat.postEphemeral") >= 1, what="the second click's answer")
    wait_until(
        lambda: "Fixed and verified" in json.dumps(fake.message(warning_ts(db, "EXA"))),
        what="the warning shows the outcome",
    )
    assert read_flags(directory, vserver_dn(SERVERS[0])) == 5
    assert read_flags(directory, vserver_dn(SERVERS[1])) == 6
    assert relay.modifies == 1
    assert len(rows(db, "select id from jobs")) == 1
    events = [r["event"] for r in rows(db, "select event from audit_log order by id")]
    assert events.count("write") == 1 and events.count("job_started") == 1
    assert warnings_by_server(fake) == {"EXA": 1, "EXB": 1}  # redrawn, never reposted
    store = open_store(db)
    try:
        assert verify_log(store)[0] is True
    finally:
        store.close()


def warning_ts(db: str, server: str) -> str:
    [kept] = rows(db, "select ts from warning_messages where server = ?", server)
    return kept["ts"]


def test_each_scheduled_firing_runs_once_across_two_processes(pair, fake):
    first, second, db = pair
    env = dict(first.env)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=REPO,
            env=child_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdin is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", line + worker.stdout.read()
        # both fire in the same minute, as two schedulers do at a cron time (not across the
        # turn of a minute, which would be two firings)
        second_now = datetime.now().second
        if second_now >= 55:
            time.sleep(61 - second_now)
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
    assert all(w.returncode == 0 for w in workers), outputs
    assert all("done" in out for out in outputs), outputs

    scheduled = rows(db, "select * from audit_runs where trigger = 'schedule'")
    assert len(scheduled) == 1 and scheduled[0]["status"] == "succeeded"
    claims = rows(db, "select name, fire_key, owner from job_runs order by name")
    assert [c["name"] for c in claims] == ["audit", "summary"]
    summaries = [p for p in top_level_posts(fake) if "summary" in str(p.get("text"))]
    assert len(summaries) == 1
    assert len(rows(db, "select id from summaries")) == 1
    assert warnings_by_server(fake) == {"EXA": 1, "EXB": 1}
