"""`authguard serve` refuses to start without what it needs, naming all of it at once.

Run as a child process: ``serve`` sets up the process's logging, which must not leak into the
test process."""

import os
import subprocess

SETTINGS = (
    "AUTHGUARD_LDAP_URL",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "AUTHGUARD_SLACK_CHANNEL",
)


def serve(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return subprocess.run(
        ["authguard", "serve", *args],
        env={**base, "AUTHGUARD_DB": str(tmp_path / "a.db"), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_socket_mode_names_every_missing_setting(tmp_path):
    result = serve(tmp_path)
    assert result.returncode == 2
    assert (
        "missing setting: AUTHGUARD_LDAP_URL, SLACK_BOT_TOKEN, AUTHGUARD_SLACK_CHANNEL, "
        "SLACK_APP_TOKEN" in result.stderr
    )


def test_http_mode_needs_the_signing_secret_not_the_app_token(tmp_path):
    result = serve(
        tmp_path, "--http", "--sample", SLACK_BOT_TOKEN="xoxb-1", AUTHGUARD_SLACK_CHANNEL="C0SEC"
    )
    assert result.returncode == 2
    assert "missing setting: SLACK_SIGNING_SECRET" in result.stderr
    assert "xoxb-1" not in result.stderr + result.stdout


def test_socket_mode_builds_without_a_signing_secret(tmp_path):
    """Socket Mode needs the app token, not the signing secret; nothing connects until start."""
    from bot.config import Secret, Settings
    from bot.directory import sample
    from handlers.runtime import Runtime
    from handlers.server import socket_mode_handler
    from tests.fakeslack import FakeSlack

    with FakeSlack() as fake:
        settings = Settings(
            db=str(tmp_path / "a.db"),
            slack_bot_token=Secret("xoxb-1"),
            slack_app_token=Secret("xapp-1"),
            slack_channel="C0SEC",
            slack_api_url=fake.base_url,
        )
        runtime = Runtime(settings, socket_mode=True, open_directory=sample)
        handler = socket_mode_handler(runtime.app, "xapp-1")
        assert handler.app is runtime.app
        assert fake.count("auth.test") == 1  # the bot token was checked at start
        assert fake.count("apps.connections.open") == 0
