"""Prove tests/fakeslack.py and tests/slackreq.py behave like Slack for the real SDKs."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, unquote

import pytest
from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.fakeslack import FakeSlack
from tests.slackreq import (
    FORM,
    BoltServer,
    app_mention_event,
    block_actions_body,
    event_body,
    post,
    post_event,
    post_form,
    sign,
    slash_command_body,
    url_verification_body,
    view_submission_body,
)

SECRET = "s3cret"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # slack_sdk reads HTTP(S)_PROXY itself and ignores NO_PROXY.
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake():
    with FakeSlack() as f:
        yield f


@pytest.fixture
def client(fake):
    return WebClient(token="xoxb-test", base_url=fake.base_url)


# --------------------------------------------------------------------------- fake Web API
def test_base_url_format(fake):
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/api/")
    assert WebClient(base_url=fake.base_url).base_url == fake.base_url


def test_auth_test_and_token_check(fake, client):
    resp = client.auth_test()
    assert (resp["user_id"], resp["bot_id"], resp["team_id"], resp["user"]) == (
        "UBOT",
        "BBOT",
        "T111",
        "authguard",
    )
    assert fake.calls("auth.test")[0].headers["Authorization"] == "Bearer xoxb-test"
    with pytest.raises(SlackApiError) as exc:
        WebClient(base_url=fake.base_url).auth_test()
    assert exc.value.response["error"] == "invalid_auth"


def test_post_message_update_round_trip(fake, client):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    r1 = client.chat_postMessage(channel="C1", text="hi", blocks=blocks)
    r2 = client.chat_postMessage(channel="C1", text="reply", thread_ts=r1["ts"])
    assert r1["ok"] and r1["channel"] == "C1"
    assert r1["ts"] == "1700000000.000100" and r2["ts"] == "1700000000.000200"
    assert r1["message"]["blocks"] == blocks and r1["message"]["text"] == "hi"
    assert r2["message"]["thread_ts"] == r1["ts"]

    up = client.chat_update(channel="C1", ts=r1["ts"], text="done", blocks=[])
    assert (up["ok"], up["channel"], up["ts"]) == (True, "C1", r1["ts"])
    eph = client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    assert eph["message_ts"] > r2["ts"]

    [post_call, _] = fake.calls("chat.postMessage")
    assert post_call.params["blocks"] == blocks  # decoded back to a list
    assert fake.calls("chat.update")[0].params["blocks"] == []
    assert fake.message(r1["ts"])["blocks"] == [] and fake.message(r1["ts"])["text"] == "done"
    assert fake.count("chat.postMessage") == 2
    assert [c.method for c in fake.calls()][-1] == "chat.postEphemeral"

    # form-encoded blocks (a JSON string) are decoded too
    client.api_call("chat.postMessage", data={"channel": "C1", "blocks": json.dumps(blocks)})
    assert fake.calls("chat.postMessage")[-1].params["blocks"] == blocks

    fake.reset()
    assert fake.calls() == []


def test_views_users_conversations(fake, client):
    view = {"type": "home", "blocks": []}
    pub = client.views_publish(user_id="U1", view=view)
    assert pub["view"]["id"].startswith("V") and pub["view"]["type"] == "home"
    opened = client.views_open(trigger_id="t1", view={"type": "modal", "blocks": []})
    upd = client.views_update(view_id=opened["view"]["id"], view={"type": "modal", "blocks": []})
    assert upd["view"]["id"] == opened["view"]["id"]
    assert fake.calls("views.publish")[0].params["view"] == view

    fake.users = {"U1": "alice", "U2": {"name": "bob", "real_name": "Bob B"}}
    assert client.users_info(user="U1")["user"]["name"] == "alice"
    assert client.users_info(user="U2")["user"]["real_name"] == "Bob B"
    assert client.users_info(user="U9")["user"]["name"] == "U9"
    assert client.conversations_info(channel="C1")["channel"]["id"] == "C1"
    assert client.api_call("anything.else")["ok"] is True


def test_usergroups_users_list(fake, client):
    fake.usergroups = {"S123": ["U1", "U2"]}
    assert client.usergroups_users_list(usergroup="S123")["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as exc:
        client.usergroups_users_list(usergroup="S999")
    assert exc.value.response["error"] == "no_such_subteam"
    assert fake.calls("usergroups.users.list")[0].params["usergroup"] == "S123"


def test_rate_limit_retried_with_retry_after(fake, client):
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    fake.fail("chat.postMessage", status=429, retry_after=1)
    start = time.monotonic()
    resp = client.chat_postMessage(channel="C1", text="hi")
    assert resp["ok"]
    first, second = fake.wait_for("chat.postMessage", count=2)
    assert second.time - first.time >= 1.0  # slept int(Retry-After) + random()
    assert time.monotonic() - start < 3


def test_rate_limit_without_handler_raises(fake, client):
    fake.fail("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as exc:
        client.chat_postMessage(channel="C1", text="hi")
    assert exc.value.response.status_code == 429
    assert exc.value.response["error"] == "ratelimited"
    assert exc.value.response.headers["Retry-After"] == "7"


def test_server_error_then_success(fake, client):
    client.retry_handlers.append(
        ServerErrorRetryHandler(
            max_retry_count=2, interval_calculator=FixedValueRetryIntervalCalculator(0.01)
        )
    )
    fake.fail("chat.update", status=500, times=1)
    assert client.chat_update(channel="C1", ts="1.2", text="x")["ok"]
    assert fake.count("chat.update") == 2

    fake.fail("chat.update", status=500, times=3)
    with pytest.raises(SlackApiError) as exc:
        client.chat_update(channel="C1", ts="1.2", text="x")
    assert exc.value.response.status_code == 500


def test_error_injection(fake, client):
    fake.fail("chat.postMessage", error="channel_not_found")
    with pytest.raises(SlackApiError) as exc:
        client.chat_postMessage(channel="C404", text="x")
    assert exc.value.response.status_code == 200
    assert exc.value.response["error"] == "channel_not_found"
    assert client.chat_postMessage(channel="C1", text="x")["ok"]  # times=1 consumed


def test_response_url(fake):
    url = fake.response_url("r1")
    assert url == f"{fake.url}/response/r1"
    resp = WebhookClient(url).send(text="done", replace_original=True)
    assert (resp.status_code, resp.body) == (200, "ok")
    [call] = fake.wait_for("response_url:r1")
    assert call.params == {"text": "done", "replace_original": True}
    assert fake.count("response_url") == 1


# --------------------------------------------------------------------------- signing helpers
def test_sign_matches_slack_sdk():
    body = slash_command_body("status ex01")
    ts = int(time.time())
    headers = sign(SECRET, body, ts)
    assert headers["X-Slack-Request-Timestamp"] == str(ts)
    expected = SignatureVerifier(SECRET).generate_signature(timestamp=str(ts), body=body)
    assert headers["X-Slack-Signature"] == expected
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)


def test_post_refuses_non_local_urls():
    with pytest.raises(ValueError):
        post("https://example.com/slack/events", "x", FORM, SECRET)


def test_body_builders_shape():
    cmd = parse_qs(slash_command_body("run", response_url="http://127.0.0.1:1/response/r"))
    for key in (
        "token team_id team_domain channel_id channel_name user_id user_name command text "
        "api_app_id response_url trigger_id"
    ).split():
        assert key in cmd, key
    assert cmd["command"] == ["/authguard"] and cmd["text"] == ["run"]

    raw = block_actions_body("approve", "req-42", message_ts="1700000000.000100")
    assert raw.startswith("payload=")
    payload = json.loads(unquote(raw[len("payload=") :]))
    assert payload["type"] == "block_actions"
    assert payload["actions"][0]["action_id"] == "approve"
    assert payload["actions"][0]["value"] == "req-42"
    assert payload["container"]["message_ts"] == payload["message"]["ts"]
    assert payload["channel"]["id"] == "C1" and payload["user"]["id"] == "U1"

    vs = json.loads(unquote(view_submission_body("cb", {"b": {"a": "v"}}, "meta")[8:]))
    assert vs["view"]["state"]["values"]["b"]["a"]["value"] == "v"
    assert vs["view"]["private_metadata"] == "meta"


# --------------------------------------------------------------------------- Bolt over HTTP
@pytest.fixture
def bolt(fake):
    app = App(
        token="xoxb-test",
        signing_secret=SECRET,
        client=WebClient(token="xoxb-test", base_url=fake.base_url),
        token_verification_enabled=False,
    )
    seen: list[str] = []

    @app.command("/authguard")
    def _cmd(ack, command, respond):
        seen.append(command["text"])
        ack("working on it")
        respond(text=f"ran {command['text']}")

    @app.action("approve")
    def _approve(ack, body, client):
        ack()
        client.chat_update(
            channel=body["channel"]["id"], ts=body["container"]["message_ts"], text="ok", blocks=[]
        )

    @app.view("cb")
    def _view(ack, view):
        seen.append(view["state"]["values"]["b"]["a"]["value"])
        ack()

    @app.event("app_mention")
    def _mention(event, say):
        say(text=f"hi <@{event['user']}>")

    with BoltServer(app) as srv:
        srv.seen = seen
        yield srv


def test_bolt_accepts_signed_slash_command(fake, bolt):
    body = slash_command_body("status ex01", response_url=fake.response_url("cmd"))
    status, text = post(bolt.url, body, FORM, SECRET)
    assert status == 200 and "working on it" in text
    [call] = fake.wait_for("response_url:cmd")
    assert call.params["text"] == "ran status ex01"
    assert bolt.seen == ["status ex01"]


def test_bolt_rejects_forged_signature(fake, bolt):
    body = slash_command_body("fix ex01")
    status, _ = post(bolt.url, body, FORM, SECRET, signature="v0=" + "0" * 64)
    assert status == 401
    status, _ = post(bolt.url, body, FORM, "wrong-secret")
    assert status == 401
    assert bolt.seen == []


def test_bolt_rejects_stale_timestamp(fake, bolt):
    body = slash_command_body("fix ex01")
    status, _ = post(bolt.url, body, FORM, SECRET, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    assert bolt.seen == []


def test_bolt_block_action_view_and_event(fake, bolt):
    status, _ = post_form(bolt.url, block_actions_body("approve", "req-42"), SECRET)
    assert status == 200
    [upd] = fake.wait_for("chat.update")
    assert upd.params["ts"] == "1700000000.000100" and upd.params["blocks"] == []

    status, _ = post_form(bolt.url, view_submission_body("cb", {"b": {"a": "val"}}), SECRET)
    assert status == 200 and bolt.seen == ["val"]

    status, _ = post_event(bolt.url, event_body(app_mention_event("<@UBOT> hi")), SECRET)
    assert status == 200
    [msg] = fake.wait_for("chat.postMessage")
    assert (msg.params["channel"], msg.params["text"]) == ("C1", "hi <@U1>")

    status, text = post_event(bolt.url, url_verification_body("chal-1"), SECRET)
    assert status == 200 and json.loads(text) == {"challenge": "chal-1"}
