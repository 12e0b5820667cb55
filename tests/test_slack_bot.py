"""The Slack bot end to end: signed requests in, Web API calls out, a real slapd behind it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests import slackreq
from tests.botharness import CHANNEL, SIGNING_SECRET, BotHarness
from tests.forest import ServerSpec, vserver_dn
from tests.slapd_server import private_slapd

EXA = ServerSpec("EXA", smtp_flags=[7])  # Basic on: warning
EXB = ServerSpec(
    "EXB",
    serial="Version 15.1 (Build 2507.6)",
    version_number=1942061522,
    connectors=[("Default EXB", 31), ("Partner EXB", 5)],
)  # two connectors with Basic
EXC = ServerSpec("EXC", smtp_flags=[1])  # clean
SBS = ServerSpec(
    "SBS01",
    operating_system="Windows Small Business Server 2003",
    domain_controller=True,
    smtp_flags=[7],
)
SERVERS = (EXA, EXB, EXC, SBS)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """A private slapd for this module: these tests change flags and stop the server."""
    with private_slapd(tmp_path_factory, "slack-slapd", SERVERS) as server:
        yield server


@pytest.fixture
def bot(tmp_path, directory):
    """A running bot with an empty database, over a freshly loaded directory."""
    directory.reset([directory.forest])
    with BotHarness(tmp_path, directory) as harness:
        yield harness


def channel_posts(fake, thread: bool | None = False):
    """chat.postMessage calls to the warnings channel (top-level unless ``thread`` is None)."""
    calls = [c for c in fake.calls("chat.postMessage") if c.params.get("channel") == CHANNEL]
    if thread is None:
        return calls
    return [c for c in calls if bool(c.params.get("thread_ts")) == thread]


def posts_in(fake, channel: str, count: int = 1, timeout: float = 5) -> list[dict]:
    """Wait until ``count`` chat.postMessage calls reached ``channel``; return their params."""
    deadline = time.time() + timeout
    while True:
        posts = [c.params for c in fake.calls("chat.postMessage") if c.params["channel"] == channel]
        if len(posts) >= count or time.time() > deadline:
            return posts
        time.sleep(0.02)


def audit_now(bot) -> dict:
    """Ask for an audit with /authguard audit and wait for the result in the channel."""
    before = bot.fake.count("response_url:cmd")
    status, text = bot.command("audit")
    assert status == 200
    calls = bot.fake.wait_for("response_url:cmd", count=before + 1, timeout=15)
    return calls[-1].params


def texts(blocks) -> str:
    return json.dumps(blocks)


# -- conversations ---------------------------------------------------------------------------


def test_audit_from_chat_is_acknowledged_at_once_then_posted_in_channel(bot):
    status, text = bot.command("audit")
    assert status == 200 and "Audit started" in text
    result = bot.fake.wait_for("response_url:cmd", timeout=15)[-1].params
    assert result["response_type"] == "in_channel"
    assert "finished" in result["text"] and "warning" in result["text"]


def test_a_mention_is_acknowledged_before_its_work_runs(bot):
    """Slack re-sends an event that is not answered within 3 s: the HTTP 200 goes out first, and
    the audit the mention asked for runs afterwards (here: held until the ack is back)."""
    gate = threading.Event()
    directory = bot.runtime.core.open_directory

    def held_directory():
        assert gate.wait(15), "the test never released the directory"
        return directory()

    bot.runtime.core.open_directory = held_directory
    event = slackreq.app_mention_event("<@UBOT> audit", channel="C0HELD", ts="2.000001")
    status, _ = bot.event(event)
    assert status == 200  # answered while the audit waits for the directory
    gate.set()
    posts = posts_in(bot.fake, "C0HELD", count=2, timeout=15)
    assert "finished" in posts[-1]["text"] and posts[-1]["thread_ts"] == "2.000001"


def test_status_by_slash_command_is_ephemeral_with_decoded_flags(bot):
    audit_now(bot)
    status, _ = bot.command("status exa")
    assert status == 200
    reply = bot.fake.wait_for("response_url:cmd", count=2)[-1].params
    assert reply["response_type"] == "ephemeral"
    shown = texts(reply["blocks"])
    assert "Status of EXA" in shown
    assert "7 (Anonymous, Basic, Integrated Windows)" in shown
    assert "warning" in shown and "last checked" in shown


def test_status_by_mention_answers_in_thread(bot):
    audit_now(bot)
    event = slackreq.app_mention_event("<@UBOT> status EXB", channel="C0OTHER", ts="1.000001")
    assert bot.event(event)[0] == 200
    posts = posts_in(bot.fake, "C0OTHER")
    assert posts, "no reply in the mention's channel"
    reply = posts[-1]
    assert reply["thread_ts"] == "1.000001"
    assert "Partner EXB" in texts(reply["blocks"]) and "*not required*" in texts(reply["blocks"])


def test_status_by_direct_message(bot):
    audit_now(bot)
    assert bot.event(slackreq.dm_event("status exc", channel="D0DM"))[0] == 200
    posts = posts_in(bot.fake, "D0DM")
    assert "Status of EXC" in texts(posts[-1]["blocks"])


def test_a_resent_event_is_answered_once(bot):
    audit_now(bot)
    event = slackreq.dm_event("status exc", channel="D0TWICE")
    bot.event(event, event_id="EvSAME")
    bot.event(event, event_id="EvSAME")
    assert len(posts_in(bot.fake, "D0TWICE", count=2, timeout=1)) == 1


def test_unknown_server_gets_close_matches(bot):
    audit_now(bot)
    bot.command("status EXX")
    reply = bot.fake.wait_for("response_url:cmd", count=2)[-1].params
    assert reply["response_type"] == "ephemeral"
    shown = texts(reply["blocks"])
    assert "No Exchange server named *EXX*" in shown
    assert "Did you mean *EXA*, *EXB*, *EXC*?" in shown


def test_a_typed_name_is_escaped_before_mrkdwn(bot):
    audit_now(bot)
    bot.command("status <!channel>*(cn=*)")
    shown = texts(bot.fake.wait_for("response_url:cmd", count=2)[-1].params["blocks"])
    assert "<!channel>" not in shown and "&lt;!channel&gt;*(cn=*)" in shown


def test_help_and_unknown_text_get_usage(bot):
    status, text = bot.command("reboot the forest")
    assert status == 200 and "/authguard status EX01" in text
    status, text = bot.command("help")
    assert "/authguard audit" in text


def test_summary_on_demand(bot):
    audit_now(bot)
    bot.command("summary")
    reply = bot.fake.wait_for("response_url:cmd", count=2)[-1].params
    assert reply["response_type"] == "in_channel"
    assert "Targets by verdict" in texts(reply["blocks"])


def test_app_home_shows_the_summary(bot):
    audit_now(bot)
    bot.event(slackreq.app_home_opened_event("U9"))
    view = bot.fake.wait_for("views.publish")[-1].params
    assert view["user_id"] == "U9"
    assert "Targets by verdict" in texts(view["view"]["blocks"])


# -- warnings --------------------------------------------------------------------------------


def test_one_warning_per_server_with_a_finding(bot):
    audit_now(bot)
    posts = channel_posts(bot.fake)
    headers = sorted(p.params["blocks"][0]["text"]["text"] for p in posts)
    assert headers == [
        "⚠️ Basic authentication enabled on EXA",
        "⚠️ Basic authentication enabled on EXB",
    ]
    exb = next(p.params for p in posts if "EXB" in p.params["text"])
    shown = texts(exb["blocks"])
    assert "Partner EXB" in shown and "Default EXB" in shown
    assert "Tls, BasicAuth" in shown and "Version 15.1" in shown
    assert "clear text" in shown  # the risk, explained


def test_unchanged_re_audit_posts_nothing_new(bot):
    audit_now(bot)
    posted = bot.fake.count("chat.postMessage")
    updated = bot.fake.count("chat.update")
    audit_now(bot)
    assert bot.fake.count("chat.postMessage") == posted
    assert bot.fake.count("chat.update") == updated


def test_a_change_updates_the_message_and_says_what_in_the_thread(bot, directory):
    audit_now(bot)
    exa_post = next(p for p in channel_posts(bot.fake) if "EXA" in p.params["text"])
    warning = bot.runtime.store.db["warning_messages"].get("EXA")
    exa_ts = warning["ts"]
    directory.modify(vserver_dn(EXA, 1), {"msExchAuthenticationFlags": [("MODIFY_REPLACE", ["3"])]})
    audit_now(bot)
    updates = [c.params for c in bot.fake.calls("chat.update") if c.params["ts"] == exa_ts]
    assert len(updates) == 1
    assert "3 (Anonymous, Basic)" in texts(updates[0]["blocks"])
    replies = [
        p.params for p in channel_posts(bot.fake, thread=True) if p.params["thread_ts"] == exa_ts
    ]
    assert (
        len(replies) == 1
        and "7 (Anonymous, Basic, Integrated Windows) → warning" in replies[0]["text"]
    )
    assert exa_post.params["channel"] == CHANNEL


def test_resolution_updates_the_message_to_resolved(bot, directory):
    audit_now(bot)
    exa_ts = bot.runtime.store.db["warning_messages"].get("EXA")["ts"]
    directory.modify(vserver_dn(EXA, 1), {"msExchAuthenticationFlags": [("MODIFY_REPLACE", ["5"])]})
    audit_now(bot)
    update = [c.params for c in bot.fake.calls("chat.update") if c.params["ts"] == exa_ts][-1]
    assert update["blocks"][0]["text"]["text"].startswith("✅ Resolved")
    assert not [b for b in update["blocks"] if b["type"] == "actions"]
    replies = [
        p.params for p in channel_posts(bot.fake, thread=True) if p.params["thread_ts"] == exa_ts
    ]
    assert "Resolved" in replies[-1]["text"]
    assert bot.runtime.store.db["warning_messages"].get("EXA")["state"] == "resolved"


def test_rate_limited_post_is_retried_after_retry_after(bot):
    bot.fake.fail("chat.postMessage", status=429, retry_after=1, times=1)
    audit_now(bot)
    assert len(channel_posts(bot.fake)) == 3  # one answered 429, then retried, plus the other
    kept = {w["server"]: w for w in bot.runtime.store.db["warning_messages"].rows}
    assert {w["state"] for w in kept.values()} == {"open"}
    assert all(bot.fake.message(w["ts"]) for w in kept.values())  # each delivered, once


def test_a_failed_post_is_kept_and_delivered_later(bot):
    bot.fake.fail("chat.postMessage", error="channel_not_found", times=1)
    audit_now(bot)
    pending = [w for w in bot.runtime.store.db["warning_messages"].rows if w["state"] == "pending"]
    assert len(pending) == 1
    bot.runtime.scheduler.get_job("retry").func()  # the retry job, as the scheduler runs it
    states = {w["server"]: w["state"] for w in bot.runtime.store.db["warning_messages"].rows}
    assert states == {"EXA": "open", "EXB": "open"}
    assert len(channel_posts(bot.fake)) == 3  # the refused post, its retry, the other warning
    assert bot.runtime.notifier.retry_pending() is None  # nothing left to retry


# -- summary ---------------------------------------------------------------------------------


def test_summary_says_a_failed_audit_loudly(bot, directory):
    audit_now(bot)
    directory.stop()
    try:
        result = audit_now(bot)
        assert "FAILED" in result["text"] or "failed" in result["text"]
        bot.runtime.post_summary()
    finally:
        directory.start()
    summary = [p.params for p in channel_posts(bot.fake) if "summary" in p.params["text"]][-1]
    shown = texts(summary["blocks"])
    assert "FAILED" in shown
    assert "All clear" not in shown
    assert "Open warnings" in shown  # the trend line


def test_summary_reports_changes_since_the_previous_one(bot, directory):
    audit_now(bot)
    bot.runtime.post_summary()
    directory.modify(vserver_dn(EXA, 1), {"msExchAuthenticationFlags": [("MODIFY_REPLACE", ["5"])]})
    audit_now(bot)
    bot.runtime.post_summary()
    summary = [p.params for p in channel_posts(bot.fake) if "summary" in p.params["text"]][-1]
    shown = texts(summary["blocks"])
    assert "0 new, 1 resolved" in shown and "EXA" in shown
    assert "Oldest open warnings" in shown


# -- HTTP endpoint ---------------------------------------------------------------------------


def test_forged_and_stale_signatures_are_rejected(bot):
    body = slackreq.slash_command_body("audit")
    status, _ = slackreq.post(bot.events_url, body, slackreq.FORM, "wrong-secret")
    assert status == 401
    status, _ = slackreq.post(
        bot.events_url, body, slackreq.FORM, SIGNING_SECRET, timestamp=int(time.time()) - 600
    )
    assert status == 401
    assert bot.runtime.store.db["audit_runs"].count == 0


def test_healthz_reports_scheduler_and_database(bot):
    import urllib.request

    with urllib.request.urlopen(bot.url + "/healthz", timeout=5) as answer:  # noqa: S310
        assert answer.status == 200
        assert json.loads(answer.read())["ok"] is True
