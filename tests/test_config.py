"""Settings: options beat environment beat the TOML file beat defaults; errors name the variable."""

import pytest

from bot.config import ConfigError, Secret, load_settings


def test_defaults():
    s = load_settings(env={})
    assert s.db == "authguard.db"
    assert s.ldap_allow_plaintext is False and s.ldap_starttls is False
    assert s.audit_schedule == "0 6 * * *" and s.summary_schedule == "0 9 * * *"
    assert s.timezone == "UTC" and s.approvals_required == 1 and s.approval_ttl_hours == 72


def test_precedence_options_env_file(tmp_path):
    conf = tmp_path / "authguard.toml"
    conf.write_text('[ldap]\nurl = "ldap://file:389"\nstarttls = true\n[storage]\ndb = "f.db"\n')
    s = load_settings(config_file=str(conf), env={"AUTHGUARD_DB": "env.db"})
    assert (s.ldap_url, s.ldap_starttls, s.db) == ("ldap://file:389", True, "env.db")
    s = load_settings({"db": "opt.db"}, config_file=str(conf), env={"AUTHGUARD_DB": "env.db"})
    assert s.db == "opt.db"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AUTHGUARD_LDAP_URL": "http://dc1"}, "AUTHGUARD_LDAP_URL"),
        ({"AUTHGUARD_LDAP_URL": "ldap://dc1:99999"}, "AUTHGUARD_LDAP_URL"),
        ({"AUTHGUARD_LDAP_STARTTLS": "maybe"}, "AUTHGUARD_LDAP_STARTTLS"),
        ({"AUTHGUARD_LDAP_CA_FILE": "/nonexistent/ca.pem"}, "AUTHGUARD_LDAP_CA_FILE"),
        ({"AUTHGUARD_AUDIT_SCHEDULE": "every day"}, "AUTHGUARD_AUDIT_SCHEDULE"),
        ({"AUTHGUARD_TIMEZONE": "Mars/Olympus"}, "AUTHGUARD_TIMEZONE"),
        ({"AUTHGUARD_APPROVERS": "U1,alice"}, "AUTHGUARD_APPROVERS"),
        ({"AUTHGUARD_APPROVALS_REQUIRED": "0"}, "AUTHGUARD_APPROVALS_REQUIRED"),
        ({"AUTHGUARD_SLACK_CHANNEL": "#security"}, "AUTHGUARD_SLACK_CHANNEL"),
        ({"AUTHGUARD_REMEDIATION_MODE": "yolo"}, "AUTHGUARD_REMEDIATION_MODE"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env)


def test_unknown_toml_key_is_refused(tmp_path):
    conf = tmp_path / "a.toml"
    conf.write_text("[ldap]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown setting \[ldap\] urll"):
        load_settings(config_file=str(conf), env={})


def test_secrets_never_print_themselves():
    s = load_settings(env={"AUTHGUARD_LDAP_PASSWORD": "hunter2", "SLACK_BOT_TOKEN": "xoxb-123"})
    assert "hunter2" not in repr(s) and "xoxb-123" not in repr(s) and "hunter2" not in str(s)
    assert s.password() == "hunter2"
    assert isinstance(s.slack_bot_token, Secret) and s.slack_bot_token.get() == "xoxb-123"


def test_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert load_settings(env={"AUTHGUARD_LDAP_PASSWORD_FILE": str(secret)}).password() == "s3cret"
    with pytest.raises(ConfigError, match="both set"):
        load_settings(
            env={"AUTHGUARD_LDAP_PASSWORD_FILE": str(secret), "AUTHGUARD_LDAP_PASSWORD": "x"}
        )


def test_lists_and_exemptions():
    s = load_settings(
        env={"AUTHGUARD_EXEMPT_SERVERS": " EX01, ex02 ,,", "AUTHGUARD_APPROVERS": "U1,S2"}
    )
    assert s.exempt_servers == ("EX01", "ex02")
    assert s.is_exempt("ex01") and s.is_exempt("EX02") and not s.is_exempt("EX03")
    assert s.approvers == ("U1", "S2")


def test_require_names_every_missing_variable():
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN, AUTHGUARD_SLACK_CHANNEL"):
        load_settings(env={}).require("slack_bot_token", "slack_channel")
