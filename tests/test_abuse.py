"""Abuse through the real HTTP endpoint: forged, replayed and unsigned requests; buttons carrying
made-up or misplaced request ids; slash commands with 10,000 characters, control characters,
mrkdwn and LDAP filter metacharacters; a server name that matches nothing.

Each gets a clear refusal (or acts exactly on what the stored request says) and changes nothing
else: the test compares the directory's values, the database and the audit log before and after.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import ldap3
import pytest

from tests import slackreq
from tests.botharness import CHANNEL, SIGNING_SECRET, BotHarness
from tests.forest import ServerSpec, connector_dn, vserver_dn
from tests.helpers import wait_until
from tests.slapd_server import SlapdServer, private_slapd

EXA = ServerSpec("EXA", smtp_flags=[7])  # fix: 7 -> 5
EXC = ServerSpec("EXC", smtp_flags=[6])  # fix: 6 -> 4
EXB = ServerSpec(
    "EXB",
    serial="Version 15.1 (Build 2507.6)",
    version_number=1942061522,
    connectors=[("Partner EXB", 5)],  # fix 5 -> 1, or require TLS 5 -> 13
)
SMTP, RECV = "msExchAuthenticationFlags", "msExchSMTPReceiveInboundSecurityFlag"
TARGETS = {
    vserver_dn(EXA): SMTP,
    vserver_dn(EXC): SMTP,
    connector_dn(EXB, "Partner EXB"): RECV,
}
PINGS = ("<!channel", "<!here", "<!everyone", "<@U0ADMIN", "<!subteam")
APPROVER = "U1"


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    with private_slapd(tmp_path_factory, "abuse-slapd", (EXA, EXB, EXC)) as server:
        yield server


@pytest.fixture
def bot(tmp_path, directory):
    """A bot that has audited the directory once: every warning and its buttons are there."""
    directory.reset([directory.forest])
    with BotHarness(tmp_path, directory, approvers=(APPROVER,)) as harness:
        harness.runtime.core.audit(trigger="chat")
        yield harness


def flags(directory: SlapdServer) -> dict[str, int]:
    conn = directory.admin_connection()
    try:
        out = {}
        for dn, attribute in TARGETS.items():
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
            out[dn] = int(conn.entries[0][attribute].values[0])
        return out
    finally:
        conn.unbind()


def snapshot(bot, directory) -> dict:
    db = bot.runtime.store.db
    return {
        "flags": flags(directory),
        "log": [
            (r["id"], r["event"], r["hash"]) for r in db["audit_log"].rows_where(order_by="id")
        ],
        "runs": db["audit_runs"].count,
        "jobs": [dict(r) for r in db["jobs"].rows],
        "approvals": db["approvals"].count,
        "waivers": db["waivers"].count,
        "requests": {r["id"]: r["status"] for r in db["fix_requests"].rows},
    }


def assert_nothing_changed(before: dict, after: dict, logged=("refusal", "denial")) -> None:
    """Everything as it was; the audit log only grew by refusals (which it must record)."""
    assert after["flags"] == before["flags"]
    assert after["log"][: len(before["log"])] == before["log"]
    assert {event for _, event, _ in after["log"][len(before["log"]) :]} <= set(logged)
    for key in ("runs", "jobs", "approvals", "waivers", "requests"):
        assert after[key] == before[key], key


def button(bot, server: str, action_id: str) -> str:
    kept = bot.runtime.store.db["warning_messages"].get(server)
    for block in bot.fake.message(kept["ts"])["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} on {server}")


def warning_ts(bot, server: str) -> str:
    return bot.runtime.store.db["warning_messages"].get(server)["ts"]


def ephemerals(bot, user: str = APPROVER) -> list[str]:
    return [
        c.params["text"] for c in bot.fake.calls("chat.postEphemeral") if c.params["user"] == user
    ]


def sent_to_slack(bot, since: int = 0) -> str:
    """Everything the bot sent to Slack (text and blocks of every call) since call ``since``."""
    return json.dumps([c.params for c in bot.fake.calls()[since:]], ensure_ascii=False)


_plain = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_unsigned(url: str, body: str, content_type: str, headers: dict | None = None):
    """POST without Slack's signature headers (127.0.0.1 only)."""
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Content-Type": content_type, **(headers or {})},
        method="POST",
    )
    try:
        with _plain.open(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


# -- requests that are not from Slack ---------------------------------------------------------


def test_forged_replayed_and_unsigned_requests_get_401_and_change_nothing(bot, directory):
    before = snapshot(bot, directory)
    calls = bot.fake.count()
    url = bot.events_url
    click = slackreq.block_actions_body("approve_fix", button(bot, "EXA", "approve_fix"))
    command = slackreq.slash_command_body("audit", response_url=bot.fake.response_url("x"))
    mention = slackreq.event_body(slackreq.app_mention_event("<@UBOT> audit"), event_id="EvX")
    old = int(time.time()) - 10 * 60
    attempts = {
        "forged (another secret)": lambda body, ctype: slackreq.post(
            url, body, ctype, "not-the-signing-secret"
        ),
        "forged (made-up signature)": lambda body, ctype: slackreq.post(
            url, body, ctype, SIGNING_SECRET, signature="v0=" + "0" * 64
        ),
        "replayed (signed ten minutes ago)": lambda body, ctype: slackreq.post(
            url, body, ctype, SIGNING_SECRET, timestamp=old
        ),
        "from the future": lambda body, ctype: slackreq.post(
            url, body, ctype, SIGNING_SECRET, timestamp=int(time.time()) + 10 * 60
        ),
        "unsigned": lambda body, ctype: post_unsigned(url, body, ctype),
        "timestamp only": lambda body, ctype: post_unsigned(
            url, body, ctype, {"X-Slack-Request-Timestamp": str(int(time.time()))}
        ),
    }
    for name, send in attempts.items():
        for body, ctype in ((click, slackreq.FORM), (command, slackreq.FORM), (mention, "json")):
            status, _ = send(body, slackreq.JSON if ctype == "json" else ctype)
            assert status == 401, f"{name}: {status}"
    # Bolt answers 401 before any listener runs: nothing was started, nothing was sent
    assert bot.fake.count() == calls
    assert_nothing_changed(before, snapshot(bot, directory), logged=())


# -- buttons whose value is not what it should be ---------------------------------------------

MADE_UP = "0123456789abcdef0123456789abcdef"


def test_made_up_request_ids_are_refused_and_change_nothing(bot, directory):
    before = snapshot(bot, directory)
    for count, action_id in enumerate(("approve_fix", "require_tls", "accept_risk", "recheck"), 1):
        bot.click(action_id, MADE_UP, user_id=APPROVER)
        text = wait_until(lambda n=count: ephemerals(bot)[n - 1 :], what=action_id)[0]
        assert "does not exist" in text or "no longer valid" in text, (action_id, text)
    status, text = bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "partner"}, "days": {"days": "30"}},
        private_metadata=MADE_UP,
        user_id=APPROVER,
    )
    assert status == 200
    refusal = json.loads(text)
    assert refusal["response_action"] == "errors" and "no longer valid" in json.dumps(refusal)
    assert_nothing_changed(before, snapshot(bot, directory))


def test_a_request_id_clicked_from_another_warning_acts_only_on_its_own_target(bot, directory):
    """EXA's fix request, sent as a click on EXC's message: the stored request decides (EXA is
    fixed, as approved), never where the click came from; EXC and EXB stay as they are."""
    value = button(bot, "EXA", "approve_fix")
    elsewhere = {"channel_id": CHANNEL, "message_ts": warning_ts(bot, "EXC")}
    status, _ = bot.click("approve_fix", value, user_id=APPROVER, **elsewhere)
    assert status == 200
    outcome = wait_until(
        lambda: [
            c.params
            for c in bot.fake.calls("chat.postMessage")
            if "Approved by" in str(c.params.get("text"))
        ],
        what="the outcome in a thread",
    )
    assert [p["thread_ts"] for p in outcome] == [warning_ts(bot, "EXA")]  # EXA's own thread
    [job] = bot.runtime.store.db["jobs"].rows
    assert (job["dn"], job["state"]) == (vserver_dn(EXA), "verified")
    assert flags(directory) == {
        vserver_dn(EXA): 5,
        vserver_dn(EXC): 6,
        connector_dn(EXB, "Partner EXB"): 5,
    }


def test_a_request_id_sent_with_another_action_is_refused(bot, directory):
    before = snapshot(bot, directory)
    cases = [
        ("EXB", "require_tls", "approve_fix"),  # "require TLS" approved as a fix
        ("EXB", "approve_fix", "require_tls"),  # a fix approved as "require TLS"
        ("EXA", "accept_risk", "approve_fix"),  # the waiver anchor approved as a fix
    ]
    for count, (server, stored, sent_as) in enumerate(cases, 1):
        bot.click(sent_as, button(bot, server, stored), user_id=APPROVER)
        # the refusal is the handler's last step: once it is here, nothing else runs
        text = wait_until(lambda n=count: ephemerals(bot)[n - 1 :], what=sent_as)[0]
        assert "not" in text.lower(), text
    assert_nothing_changed(before, snapshot(bot, directory))


def test_a_10000_character_waiver_reason_is_refused(bot, directory):
    before = snapshot(bot, directory)
    status, text = bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "<!channel> " + "x" * 9990}, "days": {"days": "30"}},
        private_metadata=button(bot, "EXA", "accept_risk"),
        user_id=APPROVER,
    )
    assert status == 200
    refusal = json.loads(text)
    assert refusal["response_action"] == "errors" and "too long" in refusal["errors"]["reason"]
    assert "<!channel" not in text
    assert_nothing_changed(before, snapshot(bot, directory))


# -- what people type -------------------------------------------------------------------------

NASTY = {
    "10,000 characters": "status " + "A" * 9993,
    "control characters": "status EX\x00A\x1b[31m",
    "a bell and a backspace": "status EXA\x07\x08",
    "a broadcast": "status <!channel>",
    "here and everyone": "status <!here|here><!everyone>",
    "a user mention": "status <@U0ADMIN>",
    "a user group": "status <!subteam^S0ADMINS>",
    "bold and code": "status *EXA*`rm`",
    "an LDAP filter": "status *)(cn=*",
    "a wildcard": "status *",
    "a wildcard name": "status EX*",
    "a filter injection": "status EXA)(|(objectClass=*",
    "a name that matches nothing": "status NOSUCHSERVER",
    "a broadcast as the command": "<!channel> audit",
}


def test_nasty_slash_commands_get_a_safe_private_answer_and_change_nothing(bot, directory):
    before = snapshot(bot, directory)
    for number, (what, text) in enumerate(NASTY.items()):
        calls = bot.fake.count()
        name = f"nasty{number}"
        status, ack = bot.command(text, response_url=bot.fake.response_url(name))
        assert status == 200, what
        ack_doc = json.loads(ack) if ack.strip().startswith("{") else {"text": ack}
        if ack_doc.get("blocks"):  # refused in the ack itself (usage, with the reason)
            assert ack_doc.get("response_type", "ephemeral") == "ephemeral", what
            answer = ack_doc
        else:
            answer = bot.fake.wait_for(f"response_url:{name}", timeout=15)[-1].params
            assert answer["response_type"] == "ephemeral", what
        shown = json.dumps(answer, ensure_ascii=False) + sent_to_slack(bot, calls)
        for ping in PINGS:
            assert ping not in shown, f"{what}: {ping} reached Slack unescaped"
        assert "Status of" not in shown, f"{what}: matched a server"
        if text.startswith("status") and len(text) < 1000 and text.isprintable():
            assert "No Exchange server named" in shown, what
    assert_nothing_changed(before, snapshot(bot, directory))


def test_nasty_mentions_are_answered_in_thread_without_pinging_anyone(bot, directory):
    before = snapshot(bot, directory)
    texts = ["<@UBOT> status <!channel>", "<@UBOT> status *)(cn=*", "<@UBOT> status <@U0ADMIN>"]
    for number, text in enumerate(texts):
        calls = bot.fake.count()
        ts = f"5.00000{number}"
        event = slackreq.app_mention_event(text, channel="C0OTHER", ts=ts)
        assert bot.event(event, event_id=f"EvNasty{number}")[0] == 200
        reply = wait_until(
            lambda t=ts: [
                c.params
                for c in bot.fake.calls("chat.postMessage")
                if c.params.get("thread_ts") == t
            ],
            what="an answer",
        )[-1]
        shown = sent_to_slack(bot, calls)
        for ping in PINGS:
            assert ping not in shown, text
        assert "No Exchange server named" in json.dumps(reply["blocks"])
    assert_nothing_changed(before, snapshot(bot, directory))
