"""The bot is killed (SIGKILL) in the middle of a remediation job and started again.

``authguard serve --http`` runs as a real child process and reaches slapd through
:class:`tests.ldaprelay.LdapRelay`, which lets the approved modify land and then stops answering,
so the job is caught between its write and its read-back. The test kills the process there,
starts a new one on the same database, and proves the job was reconciled from the directory:
recorded as verified, with no second modify (the relay counts every modify any process sends,
and the entry's entryCSN does not move).
"""

from __future__ import annotations

import json

import ldap3
import pytest

from storage import open_store
from storage.audit_log import verify_log
from tests.botprocess import CHANNEL, BotProcess, serve_env
from tests.fakeslack import FakeSlack
from tests.forest import ServerSpec, vserver_dn
from tests.helpers import rows, wait_until
from tests.ldaprelay import LdapRelay
from tests.slapd_server import SlapdServer, private_slapd

EXA = ServerSpec("EXA", smtp_flags=[7])  # fix: 7 -> 5
EXB = ServerSpec("EXB", smtp_flags=[6])  # untouched
SMTP = "msExchAuthenticationFlags"


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    with private_slapd(tmp_path_factory, "restart-slapd", (EXA, EXB)) as server:
        yield server


@pytest.fixture
def fake():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def relay(directory):
    with LdapRelay(directory.ldap_port) as relay:
        yield relay


def entry(directory: SlapdServer, dn: str) -> dict:
    """The flags and the replication stamp of an entry, read straight from slapd."""
    conn = directory.admin_connection()
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[SMTP, "entryCSN"])
        attrs = conn.entries[0].entry_attributes_as_dict
        return {"flags": int(attrs[SMTP][0]), "csn": str(attrs["entryCSN"][0])}
    finally:
        conn.unbind()


def warning_ts(db: str, server: str) -> str:
    [kept] = rows(db, "select ts from warning_messages where server = ?", server)
    return kept["ts"]


def warning_posts(fake: FakeSlack, server: str) -> int:
    """Top-level messages posted to the channel for ``server``'s warning."""
    return sum(
        1
        for c in fake.calls("chat.postMessage")
        if c.params.get("channel") == CHANNEL
        and not c.params.get("thread_ts")
        and str(c.params.get("text", "")).startswith(f"{server}:")
    )


def button_value(fake: FakeSlack, db: str, server: str, action_id: str) -> str:
    message = fake.message(warning_ts(db, server))
    for block in message["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} button on the warning of {server}")


def test_a_job_killed_after_its_write_is_reconciled_without_a_second_write(
    tmp_path, directory, relay, fake
):
    env = serve_env(tmp_path, relay.url, directory, fake, AUTHGUARD_LDAP_TIMEOUT="120")
    db = env["AUTHGUARD_DB"]
    dn = vserver_dn(EXA)
    first = BotProcess(env)
    try:
        first.command("audit", response_url=fake.response_url("audit"))
        fake.wait_for("response_url:audit", timeout=30)
        value = button_value(fake, db, "EXA", "approve_fix")

        relay.freeze_after_modify = True
        status, _ = first.click("approve_fix", value, user_id="U1")
        assert status == 200
        assert relay.frozen.wait(30), f"the modify never went through:\n{first}"
        landed = entry(directory, dn)
        assert landed["flags"] == 5  # the write landed ...
        [job] = rows(db, "select * from jobs")
        assert job["state"] == "writing"  # ... and the job is stuck reading it back
    finally:
        first.kill()  # SIGKILL: no cleanup, no finally blocks in the bot
    assert relay.modifies == 1
    assert "write" not in [r["event"] for r in rows(db, "select event from audit_log")]

    relay.thaw()
    with BotProcess(env) as second:
        second.wait_for_line(r"reconciled job \d+")
        [job] = rows(db, "select * from jobs")
        assert (job["state"], job["observed"], job["verified"]) == ("verified", 5, 1)
        assert job["reconciled_at"] is not None
        [request] = rows(db, "select * from fix_requests where id = ?", value)
        assert request["status"] == "succeeded"
        # the warning shows the outcome once the restarted bot has redrawn it
        wait_until(
            lambda: "Fixed and verified" in json.dumps(fake.message(warning_ts(db, "EXA"))),
            what="the warning shows the reconciled job",
        )
        # the same button clicked again after the restart: nothing more is written
        second.click("approve_fix", value, user_id="U2")
        wait_until(lambda: fake.count("chat.postEphemeral") >= 1, what="an answer to the click")

    assert relay.modifies == 1, "a second modify reached the directory"
    assert entry(directory, dn) == landed  # same value, same entryCSN: no second write
    assert entry(directory, vserver_dn(EXB))["flags"] == 6
    events = [r["event"] for r in rows(db, "select event from audit_log order by id")]
    assert events.count("reconcile") == 1 and "write" not in events
    assert len(rows(db, "select id from jobs")) == 1
    assert warning_posts(fake, "EXA") == 1  # redrawn in place, never posted twice
    store = open_store(db)
    try:
        assert verify_log(store)[0] is True
    finally:
        store.close()
