"""`authguard serve` refuses to start without what it needs, naming all of it at once."""

from click.testing import CliRunner

from bot.cli import main

EMPTY = {
    name: ""
    for name in (
        "AUTHGUARD_LDAP_URL",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "AUTHGUARD_SLACK_CHANNEL",
    )
}


def test_socket_mode_names_every_missing_setting():
    result = CliRunner().invoke(main, ["serve"], env=EMPTY)
    assert result.exit_code == 2
    assert (
        "missing setting: AUTHGUARD_LDAP_URL, SLACK_BOT_TOKEN, AUTHGUARD_SLACK_CHANNEL, "
        "SLACK_APP_TOKEN" in result.output
    )


def test_http_mode_needs_the_signing_secret_not_the_app_token():
    env = {**EMPTY, "SLACK_BOT_TOKEN": "xoxb-1", "AUTHGUARD_SLACK_CHANNEL": "C0SEC"}
    result = CliRunner().invoke(main, ["serve", "--http", "--sample"], env=env)
    assert result.exit_code == 2
    assert "missing setting: SLACK_SIGNING_SECRET" in result.output
    assert "xoxb-1" not in result.output
