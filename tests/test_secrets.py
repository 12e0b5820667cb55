"""Secrets never appear in a log line.

The bot runs with a Slack bot token, a signing secret and an LDAP password configured, and is
driven through errors: a refused bind, Slack failing, listener exceptions, forged requests, a
token Slack rejects. Every log record (every logger at DEBUG, ldap3's own detail logging on
too) and everything ``authguard serve`` and ``authguard audit`` write as child processes is
searched for the secret values.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import replace
from urllib.parse import quote, unquote

import pytest
from ldap3.utils.log import EXTENDED, OFF, set_library_log_detail_level

from bot.config import Secret, load_settings
from bot.directory import connect
from bot.logs import Redactor, setup_logging
from tests import slackreq
from tests.botharness import BOT_TOKEN, SIGNING_SECRET, BotHarness
from tests.botprocess import BotProcess, run_cli, serve_env
from tests.fakeslack import FakeSlack
from tests.forest import ServerSpec
from tests.helpers import wait_until
from tests.slapd_server import SlapdServer, private_slapd

WRONG_PASSWORD = "Wr0ng-LDAP-pa55word-9f2c"
LOGGERS = ("", "slack_sdk", "slack_bolt", "ldap3", "waitress", "apscheduler", "urllib3")


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    servers = (ServerSpec("EXA", smtp_flags=[7]), ServerSpec("EXB", smtp_flags=[6]))
    with private_slapd(tmp_path_factory, "secrets-slapd", servers) as server:
        yield server


def secrets(directory: SlapdServer, *more: str) -> tuple[str, ...]:
    return (BOT_TOKEN, SIGNING_SECRET, directory.svc_password, WRONG_PASSWORD, *more)


def record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


def without_trigger_id(body: str) -> str:
    """A button payload Slack would never send (no trigger_id): the listener raises."""
    payload = json.loads(unquote(body[len("payload=") :]))
    del payload["trigger_id"]
    return "payload=" + quote(json.dumps(payload), safe="")


@pytest.fixture
def ldap3_detail():
    set_library_log_detail_level(EXTENDED)
    yield
    set_library_log_detail_level(OFF)


def test_no_log_record_holds_a_secret(tmp_path, directory, caplog, ldap3_detail):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    with BotHarness(tmp_path, directory, approvers=("U1",)) as bot:
        fake, runtime = bot.fake, bot.runtime
        # a good audit, with Slack failing some posts
        fake.fail("chat.postMessage", status=500, times=1)
        fake.fail("chat.postMessage", status=429, retry_after=0, times=1)
        fake.fail("chat.postMessage", error="invalid_auth", times=1)
        bot.command("audit", response_url=fake.response_url("good"))
        fake.wait_for("response_url:good", timeout=30)
        runtime.notifier.retry_pending()
        # a listener that raises (a payload without trigger_id) and an unreachable response_url
        value = runtime.store.db["fix_requests"].rows_where("action = 'waive'").__next__()["id"]
        body = without_trigger_id(slackreq.block_actions_body("accept_risk", value))
        slackreq.post_form(bot.events_url, body, SIGNING_SECRET)
        bot.command("status EXA", response_url="http://127.0.0.1:9/response/closed")
        # forged requests
        slackreq.post_form(bot.events_url, slackreq.slash_command_body("audit"), "guess")
        # the bind refused
        wrong = replace(bot.settings, ldap_password=Secret(WRONG_PASSWORD))
        runtime.core.open_directory = lambda: connect(wrong)
        bot.command("audit", response_url=fake.response_url("bad"))
        failed = fake.wait_for("response_url:bad", timeout=30)[-1].params
        assert "invalid credentials" in json.dumps(failed["blocks"])
        # a scheduled audit that fails and a summary Slack refuses
        runtime.scheduled_audit()
        fake.fail("chat.postMessage", error="invalid_auth", times=1)
        assert runtime.post_summary() is None  # refused by Slack: kept for the retry job
        wait_until(
            lambda: any(r.exc_info and "trigger_id" in record_text(r) for r in caplog.records),
            what="the listener's exception in the log",
        )
    records = caplog.records
    assert any(r.name.startswith("slack_sdk") for r in records), "slack_sdk was not logging"
    assert any(r.name.startswith("ldap3") for r in records), "ldap3 was not logging"
    assert any(r.exc_info or r.exc_text for r in records), "no exception was logged"
    for record in records:
        text = record_text(record)
        for secret in secrets(directory):
            assert secret not in text, f"{record.name}: {text[:500]}"


def test_serve_and_audit_processes_never_print_a_secret(tmp_path, directory):
    with FakeSlack() as fake:
        env = serve_env(
            tmp_path,
            directory.ldap_url,
            directory,
            fake,
            AUTHGUARD_LDAP_PASSWORD=WRONG_PASSWORD,
            AUTHGUARD_APPROVERS="U1",
        )
        token, signing = env["SLACK_BOT_TOKEN"], env["SLACK_SIGNING_SECRET"]
        with BotProcess(env) as bot:
            fake.fail("chat.postMessage", status=500, times=None)
            bot.command("audit", response_url=fake.response_url("bad"))  # bind refused
            fake.wait_for("response_url:bad", timeout=30)
            body = without_trigger_id(slackreq.block_actions_body("accept_risk", "x" * 32))
            slackreq.post_form(bot.events_url, body, signing)  # a listener raises
            slackreq.post_form(bot.events_url, slackreq.slash_command_body("help"), "guess")
            bot.command("status EXA", response_url="http://127.0.0.1:9/response/closed")
            bot.wait_for_line(r"(?i)error|warning|exception")
        serve_output = bot.output
        # a token Slack refuses at start: the process stops with a clear error
        fake.tokens = {"xoxb-some-other-token"}
        refused = run_cli(env, "serve", "--http", "--port", "0")
        assert refused.returncode == 2 and "cannot start" in refused.stderr
        audit = run_cli(env, "audit")
        assert audit.returncode == 2 and "invalid credentials" in audit.stderr
    assert "authguard listening" in serve_output
    for output in (serve_output, refused.stdout + refused.stderr, audit.stdout + audit.stderr):
        for secret in (token, signing, WRONG_PASSWORD, directory.svc_password):
            assert secret not in output, output[-3000:]


def test_setup_logging_redacts_every_handler_it_configures(capsys):
    settings = load_settings(
        env={
            "SLACK_BOT_TOKEN": "xoxb-redact-me-123",
            "SLACK_SIGNING_SECRET": "sign-redact-me-456",
            "AUTHGUARD_LDAP_PASSWORD": "ldap-redact-me-789",
        }
    )
    root = logging.getLogger()
    saved = root.handlers[:], sys.excepthook, threading.excepthook
    root.handlers = []
    try:
        setup_logging(settings, level=logging.DEBUG)
        assert root.handlers and all(
            any(isinstance(f, Redactor) for f in h.filters) for h in root.handlers
        )
        log = logging.getLogger("authguard.test")
        log.warning("token %s secret %s", "xoxb-redact-me-123", "sign-redact-me-456")
        try:
            raise RuntimeError("bind failed with ldap-redact-me-789")
        except RuntimeError:
            log.exception("boom")

        def crash() -> None:
            raise ValueError("token xoxb-redact-me-123 in an uncaught exception")

        thread = threading.Thread(target=crash, name="crashing")
        thread.start()
        thread.join()
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, sys.excepthook, threading.excepthook = saved
    err = capsys.readouterr().err
    assert "boom" in err and "RuntimeError" in err
    assert "uncaught exception in thread crashing" in err and "ValueError" in err
    for secret in ("xoxb-redact-me-123", "sign-redact-me-456", "ldap-redact-me-789"):
        assert secret not in err
