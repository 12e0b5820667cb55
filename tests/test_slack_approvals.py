"""Approving fixes from the channel: signed button clicks in, LDAP writes to a real slapd out."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.botharness import CHANNEL, BotHarness
from tests.forest import ServerSpec, connector_dn, vserver_dn
from tests.helpers import read_flags, wait_until
from tests.slapd_server import private_slapd

EXA = ServerSpec("EXA", smtp_flags=[7])  # Basic on, fix: 7 -> 5
EXO = ServerSpec("EXO", smtp_flags=[2])  # Basic is the only method: no fix button
EXB = ServerSpec(
    "EXB",
    serial="Version 15.1 (Build 2507.6)",
    version_number=1942061522,
    connectors=[("Partner EXB", 5)],  # Tls + BasicAuth: fix 5 -> 1, require TLS 5 -> 13
)
SERVERS = (EXA, EXO, EXB)
APPROVER, GROUP_MEMBER, STRANGER = "U1", "U3", "U2"


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """A private slapd for this module: these tests change flags and stop the server."""
    with private_slapd(tmp_path_factory, "approvals-slapd", SERVERS) as server:
        yield server


def start_bot(tmp_path, directory, **overrides):
    directory.reset([directory.forest])
    overrides.setdefault("approvers", (APPROVER, "S0APPROVERS"))
    harness = BotHarness(tmp_path, directory, **overrides)
    harness.fake.usergroups = {"S0APPROVERS": [GROUP_MEMBER]}
    return harness


@pytest.fixture
def bot(tmp_path, directory):
    harness = start_bot(tmp_path, directory)
    yield harness
    harness.close()


def audit(bot) -> None:
    before = bot.fake.count("response_url:cmd")
    bot.command("audit")
    bot.fake.wait_for("response_url:cmd", count=before + 1, timeout=15)


def warning_blocks(bot, server: str) -> list[dict]:
    """The current blocks of the server's warning message, as Slack would show them."""
    kept = bot.runtime.store.db["warning_messages"].get(server)
    return bot.fake.message(kept["ts"])["blocks"]


def buttons(bot, server: str) -> dict[str, list[dict]]:
    """Buttons of the server's warning, by action id."""
    out: dict[str, list[dict]] = {}
    for block in warning_blocks(bot, server):
        if block["type"] == "actions":
            for element in block["elements"]:
                out.setdefault(element["action_id"], []).append(element)
    return out


def value_of(bot, server: str, action_id: str) -> str:
    return buttons(bot, server)[action_id][0]["value"]


def ephemerals(bot, user: str) -> list[str]:
    return [
        c.params["text"] for c in bot.fake.calls("chat.postEphemeral") if c.params["user"] == user
    ]


def log_events(bot) -> list[str]:
    return [r["event"] for r in bot.runtime.store.db["audit_log"].rows_where(order_by="id")]


# -- the buttons -------------------------------------------------------------------------------


def test_each_offending_target_gets_buttons_with_opaque_values(bot):
    audit(bot)
    exa = buttons(bot, "EXA")
    assert set(exa) == {"approve_fix", "accept_risk", "recheck"}
    approve = exa["approve_fix"][0]
    assert (
        "7 (Anonymous, Basic, Integrated Windows) -> 5 (Anonymous, Integrated Windows)"
        in (approve["confirm"]["text"]["text"])
    )
    assert "cn=" not in approve["value"].lower() and len(approve["value"]) >= 16
    exb = buttons(bot, "EXB")
    assert set(exb) == {"approve_fix", "require_tls", "accept_risk", "recheck"}
    assert (
        "5 (Tls, BasicAuth) -> 13 (Tls, BasicAuth, BasicAuthRequireTLS)"
        in (exb["require_tls"][0]["confirm"]["text"]["text"])
    )


def test_a_fix_that_would_leave_no_method_is_not_offered(bot):
    audit(bot)
    assert "approve_fix" not in buttons(bot, "EXO")
    assert "Needs a manual decision" in json.dumps(warning_blocks(bot, "EXO"))


# -- approvals -------------------------------------------------------------------------------


def test_an_approver_fixes_exactly_the_intended_bits_and_it_is_verified(bot, directory):
    audit(bot)
    status, _ = bot.click("approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=APPROVER)
    assert status == 200
    dn = vserver_dn(EXA, 1)
    wait_until(lambda: read_flags(directory, dn) == 5)
    shown = wait_until(
        lambda: (
            "Fixed and verified" in json.dumps(warning_blocks(bot, "EXA"))
            and json.dumps(warning_blocks(bot, "EXA"))
        )
    )
    assert "approved by alice" in shown
    assert "approve_fix" not in buttons(bot, "EXA")
    kept = bot.runtime.store.db["warning_messages"].get("EXA")
    thread = [
        c.params["text"]
        for c in bot.fake.calls("chat.postMessage")
        if c.params.get("thread_ts") == kept["ts"]
    ]
    assert any("Approved by alice" in t for t in thread)
    assert {"approval", "write", "verification"} <= set(log_events(bot))


def test_a_non_approver_changes_nothing_and_is_logged(bot, directory):
    audit(bot)
    status, _ = bot.click(
        "approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=STRANGER, user_name="mallory"
    )
    assert status == 200  # acknowledged, and refused
    assert wait_until(lambda: ephemerals(bot, STRANGER)) == [
        "You are not an approver for authguard."
    ]
    assert read_flags(directory, vserver_dn(EXA, 1)) == 7
    denial = [r for r in bot.runtime.store.db["audit_log"].rows if r["event"] == "denial"]
    assert denial and denial[-1]["user_id"] == STRANGER


def test_a_user_group_member_may_approve(bot, directory):
    audit(bot)
    bot.click(
        "approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=GROUP_MEMBER, user_name="carol"
    )
    wait_until(lambda: read_flags(directory, vserver_dn(EXA, 1)) == 5)
    assert bot.fake.count("usergroups.users.list") >= 1


def test_a_failed_group_lookup_refuses_at_once_and_says_why(bot, directory):
    """Membership is checked before the ack: one short try, no waiting out a rate limit. An
    unanswered lookup refuses (fail closed) with its own words, not "not an approver"."""
    audit(bot)
    value = value_of(bot, "EXA", "approve_fix")
    bot.fake.fail("usergroups.users.list", status=429, retry_after=30)
    status, _ = bot.click("approve_fix", value, user_id=GROUP_MEMBER, user_name="carol")
    assert status == 200
    assert bot.fake.count("usergroups.users.list") == 1  # answered without a retry
    text = wait_until(lambda: ephemerals(bot, GROUP_MEMBER))[0]
    assert text.startswith("authguard could not check with Slack whether you are an approver")
    assert read_flags(directory, vserver_dn(EXA, 1)) == 7
    denial = [r for r in bot.runtime.store.db["audit_log"].rows if r["event"] == "denial"]
    assert denial[-1]["user_id"] == GROUP_MEMBER
    bot.click("approve_fix", value, user_id=GROUP_MEMBER, user_name="carol")  # Slack is back
    wait_until(lambda: read_flags(directory, vserver_dn(EXA, 1)) == 5)


def test_nobody_may_approve_when_no_approvers_are_configured(tmp_path, directory):
    with start_bot(tmp_path, directory, approvers=()) as bot:
        audit(bot)
        bot.click("approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=APPROVER)
        text = wait_until(lambda: ephemerals(bot, APPROVER))[0]
        assert "no approvers are configured" in text
        assert read_flags(directory, vserver_dn(EXA, 1)) == 7


def test_two_approver_mode_needs_two_different_people(tmp_path, directory):
    with start_bot(tmp_path, directory, approvals_required=2) as bot:
        audit(bot)
        value = value_of(bot, "EXA", "approve_fix")
        bot.click("approve_fix", value, user_id=APPROVER)
        wait_until(lambda: "1 of 2" in json.dumps(warning_blocks(bot, "EXA")))
        bot.click("approve_fix", value, user_id=APPROVER)  # the same person again: not counted
        wait_until(lambda: len(ephemerals(bot, APPROVER)) >= 2)
        assert read_flags(directory, vserver_dn(EXA, 1)) == 7
        bot.click("approve_fix", value, user_id=GROUP_MEMBER, user_name="carol")
        wait_until(lambda: read_flags(directory, vserver_dn(EXA, 1)) == 5)


def test_double_click_and_concurrent_approvals_write_once(bot, directory):
    audit(bot)
    value = value_of(bot, "EXA", "approve_fix")
    clicks = [
        threading.Thread(target=bot.click, args=("approve_fix", value), kwargs={"user_id": user})
        for user in (APPROVER, APPROVER, GROUP_MEMBER, APPROVER)
    ]
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()
    wait_until(lambda: read_flags(directory, vserver_dn(EXA, 1)) == 5)
    time.sleep(0.5)  # let every lazy listener finish
    assert log_events(bot).count("write") == 1
    assert bot.runtime.store.db["jobs"].count == 1


def test_drift_between_warning_and_approval_is_refused(bot, directory):
    audit(bot)
    dn = vserver_dn(EXA, 1)
    directory.modify(dn, {"msExchAuthenticationFlags": [("MODIFY_REPLACE", ["3"])]})
    bot.click("approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=APPROVER)
    wait_until(lambda: "drift" in log_events(bot))
    assert read_flags(directory, dn) == 3
    assert "write" not in log_events(bot)


def test_dry_run_writes_nothing_and_says_so(tmp_path, directory):
    with start_bot(tmp_path, directory, remediation_mode="dry-run") as bot:
        audit(bot)
        bot.click("approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=APPROVER)
        wait_until(lambda: "Dry run" in json.dumps(warning_blocks(bot, "EXA")))
        assert read_flags(directory, vserver_dn(EXA, 1)) == 7
        assert "write" not in log_events(bot) and "dry_run" in log_events(bot)


def test_require_tls_keeps_basic_and_sets_the_tls_bit(bot, directory):
    audit(bot)
    bot.click("require_tls", value_of(bot, "EXB", "require_tls"), user_id=APPROVER)
    dn = connector_dn(EXB, "Partner EXB")
    attr = "msExchSMTPReceiveInboundSecurityFlag"
    wait_until(lambda: read_flags(directory, dn, attr) == 13)


# -- bad buttons -----------------------------------------------------------------------------


def test_a_made_up_request_id_changes_nothing(bot, directory):
    audit(bot)
    bot.click("approve_fix", "made-up-id-0000000000", user_id=APPROVER)
    text = wait_until(lambda: ephemerals(bot, APPROVER))[0]
    assert "no longer" in text or "not" in text
    assert read_flags(directory, vserver_dn(EXA, 1)) == 7


def test_an_expired_request_says_so_and_offers_a_recheck(bot, directory):
    audit(bot)
    value = value_of(bot, "EXA", "approve_fix")
    with bot.runtime.store.transaction() as db:
        db.execute(
            "update fix_requests set expires_at = '2000-01-01T00:00:00+00:00' where id = ?", [value]
        )
    bot.click("approve_fix", value, user_id=APPROVER)
    reply = wait_until(lambda: [c.params for c in bot.fake.calls("chat.postEphemeral")])[0]
    assert "expired" in reply["text"]
    assert "recheck" in json.dumps(reply["blocks"])
    assert read_flags(directory, vserver_dn(EXA, 1)) == 7


# -- waivers and rechecks --------------------------------------------------------------------


def test_accept_risk_opens_a_modal_and_the_waiver_shows(bot):
    audit(bot)
    value = value_of(bot, "EXA", "accept_risk")
    bot.click("accept_risk", value, user_id=APPROVER)
    view = bot.fake.wait_for("views.open")[-1].params["view"]
    assert view["callback_id"] == "accept_risk_modal" and view["private_metadata"] == value
    days = next(b for b in view["blocks"] if b.get("block_id") == "days")
    assert days["element"]["initial_value"] == "90" and days["element"]["max_value"] == "365"
    status, _ = bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "partner company needs Basic"}, "days": {"days": "30"}},
        private_metadata=value,
        user_id=APPROVER,
    )
    assert status == 200
    wait_until(lambda: "Risk accepted" in json.dumps(warning_blocks(bot, "EXA")))
    assert "partner company needs Basic" in json.dumps(warning_blocks(bot, "EXA"))
    bot.command("status EXA")
    reply = bot.fake.wait_for("response_url:cmd", count=2)[-1].params
    assert "waived" in json.dumps(reply["blocks"])


def test_a_waiver_beyond_365_days_is_refused_in_the_modal(bot):
    audit(bot)
    status, text = bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "because"}, "days": {"days": "400"}},
        private_metadata=value_of(bot, "EXA", "accept_risk"),
        user_id=APPROVER,
    )
    assert status == 200 and json.loads(text)["response_action"] == "errors"
    assert not bot.runtime.store.db["waivers"].count


def test_a_refusal_is_acknowledged_before_slack_takes_the_notice(bot, directory):
    """The notice to a non-approver goes out on its own thread: a rate-limited Slack (the
    client waits Retry-After, then retries) does not hold the click's HTTP 200."""
    audit(bot)
    bot.fake.fail("chat.postEphemeral", status=429, retry_after=3)
    status, _ = bot.click(
        "approve_fix", value_of(bot, "EXA", "approve_fix"), user_id=STRANGER, user_name="mallory"
    )
    assert status == 200
    assert bot.fake.count("chat.postEphemeral") <= 1  # the retry comes 3 s after the answer
    wait_until(lambda: bot.fake.count("chat.postEphemeral") == 2, timeout=15, what="the retry")
    assert ephemerals(bot, STRANGER) == ["You are not an approver for authguard."] * 2  # 429, 200
    assert read_flags(directory, vserver_dn(EXA, 1)) == 7


def test_a_stranger_cannot_waive(bot):
    audit(bot)
    status, text = bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "because"}, "days": {"days": "30"}},
        private_metadata=value_of(bot, "EXA", "accept_risk"),
        user_id=STRANGER,
    )
    assert "not an approver" in text
    assert not bot.runtime.store.db["waivers"].count


def test_an_expired_waiver_turns_the_warning_back_on(bot):
    audit(bot)
    bot.submit(
        "accept_risk_modal",
        {"reason": {"reason": "partner"}, "days": {"days": "1"}},
        private_metadata=value_of(bot, "EXA", "accept_risk"),
        user_id=APPROVER,
    )
    wait_until(lambda: "Risk accepted" in json.dumps(warning_blocks(bot, "EXA")))
    with bot.runtime.store.transaction() as db:
        db.execute("update waivers set expires_at = '2000-01-01T00:00:00+00:00'")
    audit(bot)
    assert "Basic authentication enabled on EXA" in json.dumps(warning_blocks(bot, "EXA"))


def test_anyone_may_recheck(bot, directory):
    audit(bot)
    directory.modify(vserver_dn(EXA, 1), {"msExchAuthenticationFlags": [("MODIFY_REPLACE", ["5"])]})
    bot.click("recheck", value_of(bot, "EXA", "recheck"), user_id=STRANGER)
    text = wait_until(lambda: ephemerals(bot, STRANGER))[0]
    assert "ok" in text
    assert wait_until(lambda: "Resolved" in json.dumps(warning_blocks(bot, "EXA")))
    assert CHANNEL
